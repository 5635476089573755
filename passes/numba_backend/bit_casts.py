"""float32_from_bits: the float32 whose bits are the low 32 bits of an integer, for Numba-compiled code (generated
kernels import it). The kernels' float32 exp builds 2^n from its exponent bits, (n + 127) << 23, as vector
libraries do; Numba has no scalar bit cast, and this one is an LLVM trunc and bitcast, which vectorise with the
loop around them. (Numba widens int32 arithmetic to int64, hence the truncation.)"""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 with the bits of the low 32 bits of the integer `bits`."""
    if not isinstance(bits, types.Integer):
        return None  # Numba then reports that no signature matches the argument's type

    def codegen(context, builder, signature, arguments):
        value = arguments[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, context.get_value_type(types.float32))

    return types.float32(bits), codegen
