import Testing
@testable import DualReplay
import CKernels

@Test func blasThreads() { setComputeThreads(1); #expect(dr_blas_get_threads() == 1) }
