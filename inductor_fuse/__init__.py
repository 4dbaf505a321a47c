"""inductor_fuse: Inductor rules that fuse int4 LLM inference graphs into Triton kernels.

    model = torch.compile(model, backend="inductor_fuse")
    inductor_fuse.last_report().counts   # {"siblings": 64, ...}
"""
