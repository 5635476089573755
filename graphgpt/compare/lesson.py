"""The short explanations `graphgpt compare --lesson` puts between the figures, by the section they introduce:
what to look at and why it comes out as it does, for a class meeting static and dynamic graphs for the first
time. The figures themselves, and each question's answer, come from the measurements (compare/report.py); these
texts hold no number, so they stay true on every machine.
"""

LESSON = {
    "intro": (
        "Two ways to run the same model. The dynamic tape (TinyTorch's autograd, PyTorch's eager mode) runs each "
        "operation the moment Python reaches it and writes it on a tape; backward() then walks the tape in "
        "reverse. The static graph (graphgpt.compile, like torch.compile, JAX or TensorFlow's graphs) first "
        "traces the whole step into a graph without computing anything, rewrites and plans it, and then runs the "
        "plan. Same model, same weights, same batch below: only the way of running differs."),
    "table": (
        "Read the table by rows. The first counts work: the tape runs every op of forward and backward one by one; "
        "the graph holds the same ops as nodes. The time row gives the middle of several runs and, in brackets, "
        "the range the middle half of the runs fell in: if two ranges overlap, the difference between them is "
        "not to be trusted. Memory has three rows because there are three honest answers to 'how much memory'."),
    "where-time-goes": (
        "A GPU hides this cost behind large operations; here, on a CPU with small tensors, it is in plain view. "
        "Every eager op is a Python call that checks types, allocates a result and records itself; a compiled "
        "schedule did all of that once. Watch how the tape's extra cost per op stays put while each op's "
        "arithmetic grows with the sequence length."),
    "payoff": (
        "Compiling is an investment: it costs time up front and saves a little on every step. The break-even "
        "point is that cost divided by the saving. Generation is the extreme case: the eager path below reruns "
        "the whole context for every new token, while the compiled one keeps a KV cache as graph state."),
    "static-only": (
        "Knowing the whole computation before running it is what a compiler buys. Each figure below is something "
        "that needs the whole graph: a plan for memory, rewrites checked against every use, kernels written for "
        "this graph, a proof that the batch can be split, a choice of what to recompute, and shape errors caught "
        "before any arithmetic."),
    "dynamic-only": (
        "The price of a static graph: it is fixed before the data arrives. Python that looks at a value to decide "
        "what to do next (an early exit, a loop until convergence) cannot be traced, and the compiler says so at "
        "the line that asked. The tape has no such limit, because it only records what did happen."),
    "agreement": (
        "Speed means nothing if the answers differ. Both sides use the same gradient rules, so their gradients "
        "should match closely; central differences (nudging each weight a little either way, in float64) are an "
        "independent check that those rules are right."),
    "graphs": (
        "The two pictures are the same step. On the left, what the tape recorded: only forward operations, "
        "because backward is computed by walking them. On the right, the traced step: the forward and the "
        "backward as nodes of one graph, which is what lets a compiler optimise both together. Each box is a "
        "module with its node count; click a picture to see every node."),
    "growth": (
        "Bars show the middle half of the runs at each size. Time grows with layers because there are more ops; "
        "with sequence length because each op does more arithmetic. The footprint is planned buffers plus what a "
        "step allocates while it runs."),
    "timeline": (
        "A static plan knows when every value is last used, so buffers are reused as soon as a value dies. The "
        "line is the bytes held by live values at each step of the schedule; the dashed line is the total the plan "
        "allocated. The peak usually falls where backward starts, when every activation saved for it is still alive."),
}
