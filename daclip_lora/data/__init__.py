"""Images, synthetic degradations and datasets: ``images`` (read/write), ``degrade`` (``DEGRADATIONS``, the one name
list), ``datasets`` (UIR-style LQ/GT and DA-CLIP CSV datasets) and ``synthetic`` (the demo's data set). Imports only
:mod:`daclip_lora._utils` below it."""
