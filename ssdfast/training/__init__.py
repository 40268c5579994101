"""Training as one object (run.py: TrainingRun) and its parts: the step (step.py), the epoch loop
(epoch.py), the optimiser and lr policy (optimizer.py), when to save inside an epoch
(checkpoint_schedule.py) and the run log (run_log.py: log.jsonl + TensorBoard).

Import the module you need (ssdfast.training.step, ...): this package imports nothing by itself, so
a benchmark of the step does not load the data pipeline or the evaluation.
"""
