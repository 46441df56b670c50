"""Small shared helpers at the bottom of the layers: nothing here imports the rest of daclip_lora."""
