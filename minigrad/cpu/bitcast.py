"""Bit-pattern casts between integers and floats, for jitted code (Numba intrinsics).

The vectorised exp functions build 2^n by writing n + bias into a float's exponent bits.
Numba has no scalar bit cast (only ``ndarray.view``, which takes a round trip through
memory); these compile to one LLVM ``bitcast``, free in registers, so an exp can be computed
inside the loop that uses it.
"""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def float64_from_bits(typingctx, bits):
    """The float64 whose bit pattern is the int64 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@intrinsic
def bits_of_float64(typingctx, v):
    """The int64 bit pattern of the float64 ``v``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen
