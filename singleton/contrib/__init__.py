"""Integrations with other libraries; each needs its extra (``consul-singleton[apscheduler]``, ``[django]``)."""
