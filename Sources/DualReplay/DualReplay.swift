// DualReplay — continual fine-tuning of a frozen BERT-family encoder without forgetting.
import CKernels

/// Sets the number of threads the BLAS calls of every kernel use.
public func setComputeThreads(_ n: Int) { dr_blas_set_threads(Int32(max(1, n))) }
