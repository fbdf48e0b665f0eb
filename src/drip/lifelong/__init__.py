"""drip over a device's life: rounds of filter -> store -> retrain -> recalibrate under drift.

``scenarios`` cuts a stream into rounds (class-incremental, class-mix, domain shift); ``device``
is one DRIP device's durable life; ``buffers`` are the rehearsal buffers it is compared with;
``protocol`` runs them side by side at the same bytes and compute; ``metrics`` and ``report``
judge and show the lives.
"""
