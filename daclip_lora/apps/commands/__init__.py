"""One module per ``daclip-lora`` command (diffusers' ``commands/`` layout): each has ``register(sub)``, which adds
its sub-parser with ``func`` (the command) and, where paths are checked before anything heavy is imported,
``precheck``. Heavy imports stay inside the functions, so ``daclip-lora --help`` imports none of them."""
