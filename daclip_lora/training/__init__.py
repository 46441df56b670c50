"""Training and evaluation: UIR-style options (:mod:`.options`), the engine that runs a task (:mod:`.engine`), the
task registry and trainers (:mod:`.tasks`) and evaluation reports (:mod:`.evaluation`)."""
