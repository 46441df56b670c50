"""What users run: the ``daclip-lora`` command line (:mod:`.cli`), the embedded demo (:mod:`.demo`) and the web app
(:mod:`.web`). The top layer: nothing imports it."""
