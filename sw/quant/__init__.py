"""Quantization of the NMT model: quantizers, quantized modules, QAT, packed models, results.

Modules
-------
:mod:`~lowbit.sw.quant.kernels`    dispatch of every quantized matmul to the golden kernels (and the
                                   hook that lets co-simulation substitute the RTL)
:mod:`~lowbit.sw.quant.weights`    weight quantizers and their integer representations
:mod:`~lowbit.sw.quant.modules`    ``QuantLinear`` / ``QuantMatMul`` / ``QuantEmbedding``: fake-quant
                                   (training) and integer (golden kernel) modes
:mod:`~lowbit.sw.quant.schemes`    the schemes (int8, int6, log1..log8, bmt1, bmt1a1, mixed)
:mod:`~lowbit.sw.quant.qat`        model transforms and callbacks for quantization-aware training
:mod:`~lowbit.sw.quant.packed`     the packed model format (write, validate, load)
:mod:`~lowbit.sw.quant.report`     docs/results.md generator
"""
