"""The IR's exceptions: one base class, so a caller can catch every graph problem in one place."""


class GraphError(Exception):
    """Base of every error the IR raises."""


class ShapeError(GraphError, ValueError):
    """An op was given inputs or attributes whose shapes or dtypes its rule does not accept."""


class VerificationError(GraphError):
    """A graph breaks an invariant of the IR (see ir/verifier.py)."""


class SerializationError(GraphError, ValueError):
    """A saved graph could not be read: malformed, truncated, unknown op, wrong type or absurd size."""
