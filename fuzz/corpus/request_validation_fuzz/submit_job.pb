

stories260K  Jlm_head