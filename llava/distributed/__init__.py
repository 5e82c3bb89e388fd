"""The distributed pieces both the model and training need: ZeRO-3 gathering (`zero3`), the process state on CPU
and GPU (`state`), and cleaning up what DeepSpeed jobs leave on a machine (`hygiene`). Nothing here imports the
model or training code."""
