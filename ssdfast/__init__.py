"""ssdfast: SSD object detection."""
