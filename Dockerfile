# ssdfast container: the seed's usage still works.
#   docker build -t ssd .
#   docker run --rm -it --gpus all -v /path/to/coco:/coco -v /path/to/trained_models:/trained_models --ipc=host ssd
# trains SSD300-ResNet50 on /coco and writes checkpoints to /trained_models. Any tool runs instead, e.g.
#   docker run --rm -it --gpus all -v /path/to/coco:/coco -v /path/to/trained_models:/trained_models --ipc=host ssd \
#       python tools/eval.py --data-path /coco --weights /trained_models/best.pt
# Multi-GPU: ... ssd torchrun --nproc_per_node=8 tools/train.py --data-path /coco --save-folder /trained_models --amp --dali

# Official PyTorch CUDA development image; its torch must equal requirements.txt's pin (tests/test_packaging.py).
ARG BASE_IMAGE=pytorch/pytorch:2.15.0-cuda13.2-cudnn9-devel
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 \
    CUDA_HOME=/usr/local/cuda FORCE_CUDA=1 \
    # CUDA 13 supports Turing (7.5) through Blackwell (10.0, 12.0); Volta and older were dropped. +PTX: newer GPUs JIT.
    TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/ssdfast
COPY requirements.txt requirements-dev.txt ./
RUN pip install --no-cache-dir -r requirements-dev.txt

COPY . .
RUN pip install --no-cache-dir --no-build-isolation --no-deps -e . \
    && python -c "import ssdfast.ops as o; assert o.LOAD_ERROR is None, o.LOAD_ERROR"

VOLUME ["/coco", "/trained_models"]
CMD ["python", "tools/train.py", "--data-path", "/coco", "--save-folder", "/trained_models", "--amp"]
