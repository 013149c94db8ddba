import CKernels
import Foundation
import Testing
@testable import DualReplay

/// Encoder kernels against plain-loop references (Double) and, for backward passes, against
/// central finite differences. Error measure: |a - n| / max(1, |a|, |n|).
@Suite struct EncoderKernelTests {
    static func relErr(_ a: Double, _ n: Double) -> Double { abs(a - n) / max(1, abs(a), abs(n)) }

    /// Checks d(Σ w·f(x))/dx: `analytic` is the kernel's gradient w.r.t. x; `loss` recomputes
    /// the scalar with x perturbed in place.
    static func checkGradient(_ name: String, x: inout [Float], analytic: [Float], h: Float = 1e-2,
                              tol: Double = 1e-3, loss: ([Float]) -> Double,
                              sourceLocation: SourceLocation = #_sourceLocation) {
        var worst = 0.0
        for i in x.indices {
            let orig = x[i]
            x[i] = orig + h; let lp = loss(x)
            x[i] = orig - h; let lm = loss(x)
            x[i] = orig
            let numeric = (lp - lm) / (2 * Double(h))
            worst = max(worst, relErr(Double(analytic[i]), numeric))
        }
        #expect(worst <= tol, "\(name): worst gradient error \(worst)", sourceLocation: sourceLocation)
    }

    static func dot(_ a: [Float], _ w: [Float]) -> Double {
        var s = 0.0
        for i in a.indices { s += Double(a[i]) * Double(w[i]) }
        return s
    }

    // MARK: - forward references

    @Test func matmulMatchesReference() {
        var rng = SeededRandom(seed: 1)
        let N = 5, C = 7, OC = 3
        let x = rng.floats(N * C), w = rng.floats(OC * C), b = rng.floats(OC)
        var out = [Float](repeating: 0, count: N * OC)
        dr_matmul_forward(&out, x, w, b, Int64(N), Int64(C), Int64(OC))
        for i in 0..<N {
            for o in 0..<OC {
                var s = Double(b[o])
                for c in 0..<C { s += Double(x[i * C + c]) * Double(w[o * C + c]) }
                #expect(abs(Double(out[i * OC + o]) - s) < 1e-5)
            }
        }
    }

    /// The few-rows kernel: against the Double reference for every row count it serves and column
    /// counts with and without a remainder of four; its rows do not depend on the other rows; C not
    /// a multiple of 8 is refused without writing; `dr_matmul_forward` with it on and off agree.
    @Test func smallMatmulMatchesReferenceAndIsRowInvariant() {
        var rng = SeededRandom(seed: 21)
        guard dr_small_matmul_available() != 0 else {
            var out: [Float] = [7]
            #expect(dr_small_matmul(&out, [Float](repeating: 1, count: 8), [Float](repeating: 1, count: 8), nil, 1, 8, 1) == 0 && out == [7])
            return
        }
        for (C, OC) in [(8, 1), (16, 3), (32, 5), (384, 4), (384, 17), (64, 9)] {
            let w = rng.floats(OC * C), b = rng.floats(OC)
            let xs = rng.floats(Int(DR_SMALL_MATMUL_ROWS) * C)
            var rowsAlone: [[Float]] = []
            for r in 0..<5 {
                var one = [Float](repeating: 0, count: OC)
                #expect(dr_small_matmul(&one, Array(xs[(r * C)..<((r + 1) * C)]), w, b, 1, Int64(C), Int64(OC)) == 1)
                rowsAlone.append(one)
            }
            for N in [1, 2, 3, 4, 5, 7, 11, Int(DR_SMALL_MATMUL_ROWS)] {
                let x = Array(xs.prefix(N * C))
                for bias in [true, false] {
                    var out = [Float](repeating: .nan, count: N * OC)
                    #expect(dr_small_matmul(&out, x, w, bias ? b : nil, Int64(N), Int64(C), Int64(OC)) == 1)
                    var worst = 0.0
                    for i in 0..<N {
                        for o in 0..<OC {
                            var s = bias ? Double(b[o]) : 0
                            for c in 0..<C { s += Double(x[i * C + c]) * Double(w[o * C + c]) }
                            worst = max(worst, Self.relErr(Double(out[i * OC + o]), s))
                        }
                    }
                    #expect(worst < 1e-5, "N \(N) C \(C) OC \(OC): worst \(worst)")
                    if bias {
                        for r in 0..<min(N, 5) {
                            #expect(Array(out[(r * OC)..<((r + 1) * OC)]).map(\.bitPattern) == rowsAlone[r].map(\.bitPattern),
                                    "row \(r) of \(N) differs from the row alone (C \(C) OC \(OC))")
                        }
                    }
                }
            }
        }
        var out: [Float] = [7]
        #expect(dr_small_matmul(&out, [Float](repeating: 1, count: 7), [Float](repeating: 1, count: 7), nil, 1, 7, 1) == 0 && out == [7])
        // through dr_matmul_forward: on and off agree to rounding
        let N = 11, C = 384, OC = 40
        let x = rng.floats(N * C), w = rng.floats(OC * C), b = rng.floats(OC)
        var on = [Float](repeating: 0, count: N * OC), off = on
        dr_matmul_forward(&on, x, w, b, Int64(N), Int64(C), Int64(OC))
        dr_set_small_matmul(0)
        dr_matmul_forward(&off, x, w, b, Int64(N), Int64(C), Int64(OC))
        dr_set_small_matmul(1)
        #expect(zip(on, off).allSatisfy { Self.relErr(Double($0), Double($1)) < 1e-5 })
        #expect(on != off, "the few-rows path did not run (its sums are ordered differently from OpenBLAS's)")
    }

    /// The packed few-rows kernel (frozen weights): bit for bit the plain fused multiply-add
    /// reference on the unpacked weight, for every instruction set this CPU has, every row count
    /// it serves, column counts with a partial last panel and an odd number of panels, with and
    /// without bias and residual; the reference itself against a Double sum; rows do not depend
    /// on N; an unavailable instruction set or too large a C is refused without writing.
    @Test func packedMatmulIsTheReferenceBitForBit() {
        var rng = SeededRandom(seed: 31)
        let best = dr_packed_matmul_isa()
        var out: [Float] = [7]
        #expect(dr_packed_matmul(&out, [1], [1], nil, nil, 1, 1, 1, best + 1) == 0 && out == [7], "an unavailable ISA ran")
        guard best != 0 else { return }
        let isas = best == DR_ISA_AVX512 ? [DR_ISA_AVX2, DR_ISA_AVX512] : [DR_ISA_AVX2]
        for (C, OC) in [(1, 1), (7, 5), (33, 17), (384, 40), (64, 48), (96, 130), (384, 1152)] {
            let w = rng.floats(OC * C), b = rng.floats(OC)
            let rows = Int(DR_SMALL_MATMUL_ROWS)
            let xs = rng.floats(rows * C), rs = rng.floats(rows * OC)
            var packed = [Float](repeating: .nan, count: Int(dr_packed_linear_size(Int64(C), Int64(OC))))
            dr_pack_linear(&packed, w, Int64(C), Int64(OC))
            let Ns = OC > 500 ? [1, 11, rows] : Array(1...rows)
            for N in Ns {
                let x = Array(xs.prefix(N * C)), r = Array(rs.prefix(N * OC))
                for (bias, resid) in [(true, true), (true, false), (false, true), (false, false)] {
                    var ref = [Float](repeating: 0, count: N * OC)
                    dr_linear_reference(&ref, x, w, bias ? b : nil, resid ? r : nil, Int64(N), Int64(C), Int64(OC))
                    if N == 3 {  // the reference is the linear layer
                        var worst = 0.0
                        for i in 0..<N {
                            for o in 0..<OC {
                                var sum = (bias ? Double(b[o]) : 0) + (resid ? Double(r[i * OC + o]) : 0)
                                for c in 0..<C { sum += Double(x[i * C + c]) * Double(w[o * C + c]) }
                                worst = max(worst, Self.relErr(Double(ref[i * OC + o]), sum))
                            }
                        }
                        #expect(worst < 1e-5, "reference C \(C) OC \(OC): worst \(worst)")
                    }
                    for isa in isas {
                        var got = [Float](repeating: .nan, count: N * OC + 1)
                        got[N * OC] = 42  // nothing is written past the output
                        #expect(dr_packed_matmul(&got, x, packed, bias ? b : nil, resid ? r : nil, Int64(N), Int64(C), Int64(OC), isa) == isa)
                        #expect(got.prefix(N * OC).map(\.bitPattern) == ref.map(\.bitPattern),
                                "ISA \(isa) N \(N) C \(C) OC \(OC) bias \(bias) resid \(resid) differs from the reference")
                        #expect(got[N * OC] == 42)
                        if N == 1 || isa != isas.last { continue }
                        var alone = [Float](repeating: 0, count: OC)  // the last row, computed alone
                        #expect(dr_packed_matmul(&alone, Array(x.suffix(C)), packed, bias ? b : nil, resid ? Array(r.suffix(OC)) : nil,
                                                 1, Int64(C), Int64(OC), isa) == isa)
                        #expect(Array(got[((N - 1) * OC)..<(N * OC)]).map(\.bitPattern) == alone.map(\.bitPattern))
                    }
                }
            }
        }
        // training-sized calls, where the weights go in column blocks swept over every row block
        // (more panels than one block holds at C 384 and at C 1536), still the reference's bits
        for (C, OC, N) in [(384, 520, 61), (1536, 390, 30), (64, 300, 40)] {
            let w = rng.floats(OC * C), b = rng.floats(OC), x = rng.floats(N * C), r = rng.floats(N * OC)
            var packed = [Float](repeating: .nan, count: Int(dr_packed_linear_size(Int64(C), Int64(OC))))
            dr_pack_linear(&packed, w, Int64(C), Int64(OC))
            var ref = [Float](repeating: 0, count: N * OC)
            dr_linear_reference(&ref, x, w, b, r, Int64(N), Int64(C), Int64(OC))
            for isa in isas {
                var got = [Float](repeating: .nan, count: N * OC)
                #expect(dr_packed_matmul(&got, x, packed, b, r, Int64(N), Int64(C), Int64(OC), isa) == isa)
                #expect(got.map(\.bitPattern) == ref.map(\.bitPattern), "ISA \(isa) N \(N) C \(C) OC \(OC): blocked call differs")
            }
        }
        // the transposed pack: dout · W through dr_pack_linear_t is the reference on Wᵀ, accumulating
        for (C, OC) in [(40, 33), (384, 1152)] {
            let w = rng.floats(OC * C), N = 13
            let dout = rng.floats(N * OC), acc = rng.floats(N * C)
            var wt = [Float](repeating: 0, count: C * OC)
            for o in 0..<OC { for c in 0..<C { wt[c * OC + o] = w[o * C + c] } }
            var ref = [Float](repeating: 0, count: N * C)
            dr_linear_reference(&ref, dout, wt, nil, acc, Int64(N), Int64(OC), Int64(C))
            var packedT = [Float](repeating: .nan, count: Int(dr_packed_linear_size(Int64(OC), Int64(C))))
            dr_pack_linear_t(&packedT, w, Int64(C), Int64(OC))
            var got = acc
            let used = got.withUnsafeMutableBufferPointer { g in
                dr_packed_matmul(g.baseAddress, dout, packedT, nil, g.baseAddress, Int64(N), Int64(OC), Int64(C), 0)
            }
            #expect(used != 0)
            #expect(got.map(\.bitPattern) == ref.map(\.bitPattern), "transposed pack C \(C) OC \(OC)")
        }
        let big = Int(DR_PACKED_MAX_C) + 1
        #expect(dr_packed_matmul(&out, [Float](repeating: 1, count: big), [Float](repeating: 1, count: 16 * big), nil, nil,
                                 1, Int64(big), 1, 0) == 0 && out == [7])
    }

    /// The bfloat16 kernel (`training.frozenPrecision` "bf16"): rounding to nearest even, the
    /// kernel against its plain C meaning (to fp32 summation rounding: AVX512-BF16 may fuse the
    /// pair differently) and within bfloat16 rounding of the exact product, odd C, 1 to 61 rows,
    /// the transposed pack, and a split over an executor giving the serial bits.
    @Test func bf16MatmulIsItsReference() {
        #expect(dr_bf16_round(1 + 0x1p-8) == 1, "a tie goes to even")
        #expect(dr_bf16_round(1 + 3 * 0x1p-9) == 1 + 0x1p-7)
        #expect(dr_bf16_round(1 + 0x1p-7 + 0x1p-8) == 1 + 0x1p-6, "a tie goes to even")
        #expect(dr_bf16_round(.nan).isNaN && dr_bf16_round(.infinity) == .infinity && dr_bf16_round(-2.5) == -2.5)
        var rng = SeededRandom(seed: 53)
        var out: [Float] = [7]
        guard dr_bf16_available() != 0 else {
            let w: [UInt32] = [UInt32](repeating: 0, count: 16)
            #expect(dr_packed_matmul_bf16(&out, [1], w, nil, nil, 1, 1, 1) == 0 && out == [7], "ran without AVX512-BF16")
            return
        }
        for (C, OC, Ns) in [(1, 1, [1, 3]), (7, 5, [1, 2, 13]), (33, 17, [1, 5, 12, 25]), (384, 1152, [1, 61]), (1536, 140, [4, 30])] {
            let w = rng.floats(OC * C), b = rng.floats(OC)
            var packed = [UInt32](repeating: 0xFFFF_FFFF, count: Int(dr_packed_linear_size_bf16(Int64(C), Int64(OC))))
            dr_pack_linear_bf16(&packed, w, Int64(C), Int64(OC))
            for N in Ns {
                let x = rng.floats(N * C), r = rng.floats(N * OC)
                for (bias, resid) in [(true, true), (false, false)] {
                    var ref = [Float](repeating: 0, count: N * OC)
                    dr_linear_reference_bf16(&ref, x, w, bias ? b : nil, resid ? r : nil, Int64(N), Int64(C), Int64(OC))
                    var got = [Float](repeating: .nan, count: N * OC + 1)
                    got[N * OC] = 42
                    #expect(dr_packed_matmul_bf16(&got, x, packed, bias ? b : nil, resid ? r : nil, Int64(N), Int64(C), Int64(OC)) == 1)
                    #expect(got[N * OC] == 42, "wrote past the output")
                    var worstRef = 0.0, worstExact = 0.0
                    for i in 0..<N {
                        for o in 0..<OC {
                            var exact = (bias ? Double(b[o]) : 0) + (resid ? Double(r[i * OC + o]) : 0), mag = 1.0
                            for c in 0..<C {
                                exact += Double(x[i * C + c]) * Double(w[o * C + c])
                                mag += abs(Double(x[i * C + c]) * Double(w[o * C + c]))
                            }
                            worstRef = max(worstRef, abs(Double(got[i * OC + o]) - Double(ref[i * OC + o])) / mag)
                            worstExact = max(worstExact, abs(Double(got[i * OC + o]) - exact) / mag)
                        }
                    }
                    #expect(worstRef < 1e-6, "C \(C) OC \(OC) N \(N): \(worstRef) from the reference")
                    #expect(worstExact < 1e-2, "C \(C) OC \(OC) N \(N): \(worstExact) from the exact product")
                }
            }
        }
        // the transposed pack: dinp += dout · W
        for (C, OC) in [(40, 33), (384, 1152)] {
            let w = rng.floats(OC * C), N = 29
            let dout = rng.floats(N * OC), acc = rng.floats(N * C)
            var wt = [Float](repeating: 0, count: C * OC)
            for o in 0..<OC { for c in 0..<C { wt[c * OC + o] = w[o * C + c] } }
            var ref = [Float](repeating: 0, count: N * C)
            dr_linear_reference_bf16(&ref, dout, wt, nil, acc, Int64(N), Int64(OC), Int64(C))
            var packedT = [UInt32](repeating: 0, count: Int(dr_packed_linear_size_bf16(Int64(OC), Int64(C))))
            dr_pack_linear_t_bf16(&packedT, w, Int64(C), Int64(OC))
            var got = acc
            let used = got.withUnsafeMutableBufferPointer { g in
                dr_packed_matmul_bf16(g.baseAddress, dout, packedT, nil, g.baseAddress, Int64(N), Int64(OC), Int64(C))
            }
            #expect(used == 1)
            var worst = 0.0
            for (g, e) in zip(got, ref) { worst = max(worst, abs(Double(g) - Double(e)) / (1 + abs(Double(e)))) }
            #expect(worst < 1e-5, "transposed bf16 pack C \(C) OC \(OC): \(worst)")
        }
        // split over an executor: the serial bits, by rows (64 rows) and by panels (30 rows)
        final class Count: @unchecked Sendable { var tasks = 0 }
        for (N, C, OC) in [(64, 384, 1152), (30, 384, 1152)] {
            let w = rng.floats(OC * C), b = rng.floats(OC), x = rng.floats(N * C)
            var packed = [UInt32](repeating: 0, count: Int(dr_packed_linear_size_bf16(Int64(C), Int64(OC))))
            dr_pack_linear_bf16(&packed, w, Int64(C), Int64(OC))
            var serial = [Float](repeating: 0, count: N * OC)
            dr_set_thread_executor(nil)
            _ = dr_packed_matmul_bf16(&serial, x, packed, b, nil, Int64(N), Int64(C), Int64(OC))
            let count = Count()
            let ex = UnsafeMutablePointer<dr_executor>.allocate(capacity: 1)
            defer { ex.deallocate() }
            ex.initialize(to: dr_executor(run: { ctx, n, fn, arg in
                Unmanaged<Count>.fromOpaque(ctx!).takeUnretainedValue().tasks += Int(n)
                nonisolated(unsafe) let fn = fn!, arg = arg
                DispatchQueue.concurrentPerform(iterations: Int(n)) { i in fn(arg, Int64(i)) }
            }, ctx: Unmanaged.passUnretained(count).toOpaque(), workers: 2))
            var split = [Float](repeating: .nan, count: N * OC)
            dr_set_thread_executor(ex)
            _ = dr_packed_matmul_bf16(&split, x, packed, b, nil, Int64(N), Int64(C), Int64(OC))
            dr_set_thread_executor(nil)
            #expect(count.tasks == 2, "N \(N): not split")
            #expect(split.map(\.bitPattern) == serial.map(\.bitPattern), "N \(N): the split differs from the serial call")
        }
    }

    /// A large packed call split by rows or output panels over an executor (2, 3 and 5 workers, tasks on
    /// Dispatch's threads) gives the serial call's bits, and really was split.
    @Test func packedMatmulOverAnExecutorIsTheSerialResult() {
        guard dr_packed_matmul_isa() != 0 else { return }
        var rng = SeededRandom(seed: 41)
        final class Count: @unchecked Sendable { var tasks = 0 }
        for (N, C, OC) in [(64, 384, 1152), (40, 1536, 384), (300, 384, 384)] {
            let w = rng.floats(OC * C), b = rng.floats(OC), x = rng.floats(N * C), r = rng.floats(N * OC)
            var packed = [Float](repeating: 0, count: Int(dr_packed_linear_size(Int64(C), Int64(OC))))
            dr_pack_linear(&packed, w, Int64(C), Int64(OC))
            var serial = [Float](repeating: 0, count: N * OC)
            dr_set_thread_executor(nil)
            #expect(dr_packed_matmul(&serial, x, packed, b, r, Int64(N), Int64(C), Int64(OC), 0) != 0)
            for workers in [2, 3, 5] {
                let count = Count()
                let ex = UnsafeMutablePointer<dr_executor>.allocate(capacity: 1)
                defer { ex.deallocate() }
                ex.initialize(to: dr_executor(run: { ctx, n, fn, arg in
                    let c = Unmanaged<Count>.fromOpaque(ctx!).takeUnretainedValue()
                    c.tasks += Int(n)
                    nonisolated(unsafe) let fn = fn!, arg = arg
                    DispatchQueue.concurrentPerform(iterations: Int(n)) { i in fn(arg, Int64(i)) }
                }, ctx: Unmanaged.passUnretained(count).toOpaque(), workers: Int64(workers)))
                var split = [Float](repeating: .nan, count: N * OC)
                dr_set_thread_executor(ex)
                #expect(dr_packed_matmul(&split, x, packed, b, r, Int64(N), Int64(C), Int64(OC), 0) != 0)
                dr_set_thread_executor(nil)
                #expect(count.tasks > 1, "N \(N) C \(C) OC \(OC): not split over \(workers) workers")
                #expect(split.map(\.bitPattern) == serial.map(\.bitPattern), "N \(N) C \(C) OC \(OC), \(workers) workers")
            }
        }
    }

    /// Packing the frozen encoder: the single-utterance path (N <= DR_SMALL_MATMUL_ROWS) runs the
    /// packed kernel (other bits than without it, the same values to rounding) and a batch above
    /// that size gives exactly the bits of the unpacked encoder.
    @Test func packedEncoderAgreesWithUnpacked() {
        let cfg = BertConfig(layers: 2, hidden: 32, heads: 4, intermediate: 64, vocabSize: 40,
                             maxPositions: 40, typeVocabSize: 2, layerNormEps: 1e-12, hiddenAct: "gelu")
        let tok = try! BertTokenizer(vocab: (0..<40).map { $0 == 0 ? "[PAD]" : $0 == 1 ? "[CLS]" : $0 == 2 ? "[SEP]" : $0 == 3 ? "[UNK]" : "t\($0)" })
        let plain = SentenceEncoder(weights: BertWeights(config: cfg, seed: 5), tokenizer: tok)
        let packedW = BertWeights(config: cfg, seed: 5)
        packedW.pack()
        let packed = SentenceEncoder(weights: packedW, tokenizer: tok)
        guard dr_packed_matmul_isa() != 0 else { #expect(packedW.packedBytes == 0); return }
        #expect(packedW.packedBytes == Int(dr_bert_packed_size([cfg.kernelConfig])) * 4 && packedW.packedBytes > 0)
        let short = PackedBatch([[1, 5, 7, 9, 11, 2], [1, 8, 30, 2]])
        let a = plain.forward(short).hidden(layer: cfg.layers), b = packed.forward(short).hidden(layer: cfg.layers)
        #expect(zip(a, b).allSatisfy { Self.relErr(Double($0), Double($1)) < 1e-5 })
        #expect(a.map(\.bitPattern) != b.map(\.bitPattern), "the packed path did not run")
        var seqs: [[Int32]] = []
        for k in 0..<5 {
            var ids: [Int32] = [1]
            for t in 0..<6 { ids.append(Int32(4 + (k * 7 + t * 3) % 36)) }
            seqs.append(ids + [2])
        }
        let long = PackedBatch(seqs)
        #expect(long.tokenCount > Int(DR_SMALL_MATMUL_ROWS))
        let c = plain.forward(long).hidden(layer: cfg.layers), d = packed.forward(long).hidden(layer: cfg.layers)
        #expect(c.map(\.bitPattern) == d.map(\.bitPattern))
    }

    @Test func layerNormMatchesReferenceAndGradients() {
        var rng = SeededRandom(seed: 2)
        let N = 4, C = 9
        var x = rng.floats(N * C, -2, 2), w = rng.floats(C), b = rng.floats(C)
        let eps: Float = 1e-5
        var out = [Float](repeating: 0, count: N * C), mean = [Float](repeating: 0, count: N), rstd = mean
        dr_layernorm_forward(&out, &mean, &rstd, x, w, b, Int64(N), Int64(C), eps)
        for i in 0..<N {
            let row = (0..<C).map { Double(x[i * C + $0]) }
            let m = row.reduce(0, +) / Double(C)
            let v = row.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(C)
            for c in 0..<C {
                let ref = (row[c] - m) / (v + Double(eps)).squareRoot() * Double(w[c]) + Double(b[c])
                #expect(abs(Double(out[i * C + c]) - ref) < 1e-5)
            }
        }
        let gw = rng.floats(N * C)
        var dx = [Float](repeating: 0, count: N * C), dw = [Float](repeating: 0, count: C), db = dw
        dr_layernorm_backward(&dx, &dw, &db, gw, x, w, mean, rstd, Int64(N), Int64(C))
        func loss(_ x: [Float], _ w: [Float], _ b: [Float]) -> Double {
            var o = [Float](repeating: 0, count: N * C)
            dr_layernorm_forward(&o, nil, nil, x, w, b, Int64(N), Int64(C), eps)
            return Self.dot(o, gw)
        }
        let (w0, b0, x0) = (w, b, x)
        Self.checkGradient("layernorm dx", x: &x, analytic: dx, h: 1e-3) { loss($0, w0, b0) }
        Self.checkGradient("layernorm dw", x: &w, analytic: dw, h: 1e-3) { loss(x0, $0, b0) }
        Self.checkGradient("layernorm db", x: &b, analytic: db, h: 1e-3) { loss(x0, w0, $0) }
    }

    @Test func geluIsExactErfAndGradientChecks() {
        var rng = SeededRandom(seed: 3)
        var x = rng.floats(64, -4, 4)
        var out = [Float](repeating: 0, count: x.count)
        dr_gelu_forward(&out, x, Int64(x.count))
        for i in x.indices {
            let v = Double(x[i])
            #expect(abs(Double(out[i]) - 0.5 * v * (1 + erf(v / 2.0.squareRoot()))) < 1e-6)
        }
        let gw = rng.floats(x.count)
        var dx = [Float](repeating: 0, count: x.count)
        dr_gelu_backward(&dx, x, gw, Int64(x.count))
        Self.checkGradient("gelu", x: &x, analytic: dx, h: 1e-3) { x in
            var o = [Float](repeating: 0, count: x.count)
            dr_gelu_forward(&o, x, Int64(x.count))
            return Self.dot(o, gw)
        }
    }

    @Test func attentionMatchesReferenceAndGradients() {
        var rng = SeededRandom(seed: 4)
        let C = 8, NH = 2, HS = C / NH
        let lens = [3, 1, 5]
        var cu: [Int64] = [0]
        for l in lens { cu.append(cu.last! + Int64(l)) }
        let N = Int(cu.last!), B = lens.count
        var qkv = rng.floats(N * 3 * C, -1.5, 1.5)
        let PS = Int(dr_attention_prob_size(cu, Int64(B), Int64(NH)))
        #expect(PS == NH * lens.reduce(0) { $0 + $1 * $1 })
        var out = [Float](repeating: 0, count: N * C), probs = [Float](repeating: 0, count: PS)
        dr_attention_forward(&out, &probs, qkv, cu, Int64(B), Int64(C), Int64(NH))
        // reference: each sequence attends only to itself
        for b in 0..<B {
            let t0 = Int(cu[b]), T = lens[b]
            for h in 0..<NH {
                for i in 0..<T {
                    var s = [Double](repeating: 0, count: T)
                    for j in 0..<T {
                        for d in 0..<HS {
                            s[j] += Double(qkv[(t0 + i) * 3 * C + h * HS + d]) * Double(qkv[(t0 + j) * 3 * C + C + h * HS + d])
                        }
                        s[j] /= Double(HS).squareRoot()
                    }
                    let m = s.max()!
                    let e = s.map { exp($0 - m) }, z = e.reduce(0, +)
                    for d in 0..<HS {
                        var o = 0.0
                        for j in 0..<T { o += e[j] / z * Double(qkv[(t0 + j) * 3 * C + 2 * C + h * HS + d]) }
                        #expect(abs(Double(out[(t0 + i) * C + h * HS + d]) - o) < 1e-5)
                    }
                }
            }
        }
        let gw = rng.floats(N * C)
        var dqkv = [Float](repeating: 0, count: N * 3 * C), scratch = [Float](repeating: 0, count: 8)
        dr_attention_backward(&dqkv, &scratch, gw, qkv, probs, cu, Int64(B), Int64(C), Int64(NH))
        Self.checkGradient("attention dqkv", x: &qkv, analytic: dqkv, h: 1e-3) { q in
            var o = [Float](repeating: 0, count: N * C), p = [Float](repeating: 0, count: PS)
            dr_attention_forward(&o, &p, q, cu, Int64(B), Int64(C), Int64(NH))
            return Self.dot(o, gw)
        }
    }

    @Test func poolingAndNormalisation() {
        var rng = SeededRandom(seed: 5)
        let C = 6, cu: [Int64] = [0, 2, 5]
        let x = rng.floats(5 * C)
        var mean = [Float](repeating: 0, count: 2 * C), cls = mean, norm = mean
        dr_mean_pool_forward(&mean, x, cu, 2, Int64(C))
        dr_cls_pool_forward(&cls, x, cu, 2, Int64(C))
        for c in 0..<C {
            #expect(abs(mean[c] - (x[c] + x[C + c]) / 2) < 1e-6)
            #expect(abs(mean[C + c] - (x[2 * C + c] + x[3 * C + c] + x[4 * C + c]) / 3) < 1e-6)
            #expect(cls[c] == x[c] && cls[C + c] == x[2 * C + c])
        }
        dr_l2_normalize_forward(&norm, mean, 2, Int64(C))
        for b in 0..<2 {
            let n = (0..<C).reduce(Float(0)) { $0 + norm[b * C + $1] * norm[b * C + $1] }
            #expect(abs(n - 1) < 1e-5)
        }
    }

    // MARK: - the whole encoder

    static let tinyConfig = BertConfig(layers: 2, hidden: 8, heads: 2, intermediate: 12, vocabSize: 20,
                                       maxPositions: 10, typeVocabSize: 2, layerNormEps: 1e-12, hiddenAct: "gelu")
    static let tinyBatch = PackedBatch([[1, 5, 7, 2], [1, 3], [1, 9, 9, 4, 2]])

    static func tinyTokenizer() -> BertTokenizer {
        try! BertTokenizer(vocab: (0..<20).map { $0 == 0 ? "[PAD]" : $0 == 1 ? "[CLS]" : $0 == 2 ? "[SEP]" : $0 == 3 ? "[UNK]" : "t\($0)" })
    }

    @Test func packingNeverChangesResults() {
        let weights = BertWeights(config: Self.tinyConfig, seed: 7)
        let tok = Self.tinyTokenizer()
        let enc = SentenceEncoder(weights: weights, tokenizer: tok)
        let seqs: [[Int32]] = [[1, 5, 7, 2], [1, 3], [1, 9, 9, 4, 2]]
        let out = enc.forward(PackedBatch(seqs))
        let together = (0..<seqs.count).map { out.hidden(layer: 2, sequence: $0) }
        for (b, s) in seqs.enumerated() {
            let alone = enc.forward(PackedBatch([s])).hidden(layer: 2)
            let inBatch = together[b]
            let d = zip(alone, inBatch).map { abs($0 - $1) }.max()!
            #expect(d < 1e-5, "sequence \(b): \(d)")
        }
    }

    /// Full fine-tune gradients of every parameter tensor and the frozen-base path, against
    /// finite differences in double-accumulated loss.
    @Test func encoderBackwardMatchesFiniteDifferences() {
        let cfgS = Self.tinyConfig
        let weights = BertWeights(config: cfgS, seed: 11)
        var rng = SeededRandom(seed: 12)
        let batch = Self.tinyBatch
        let N = batch.tokenCount, C = cfgS.hidden
        let gw = rng.floats(N * C)
        let tok = Self.tinyTokenizer()
        let enc = SentenceEncoder(weights: weights, tokenizer: tok)
        _ = enc.forward(batch)

        // analytic: all weight gradients
        let grads = BertWeights(config: cfgS)
        var cfg = cfgS.kernelConfig
        var p = weights.params, g = grads.params
        let maxT = (0..<batch.count).map { batch.length($0) }.max()!
        var scratch = [Float](repeating: 0, count: Int(dr_bert_backward_scratch_size(&cfg, nil, Int64(N), Int64(batch.count), Int64(maxT))))
        var dinput = [Float](repeating: 0, count: N * C)
        batch.tokenIds.withUnsafeBufferPointer { ids in
            batch.cuSeqlens.withUnsafeBufferPointer { cu in
                dr_bert_backward(&g, nil, &dinput, &scratch, gw, &enc.workspace.acts, nil, &p, nil, &cfg, ids.baseAddress, nil,
                                 cu.baseAddress, Int64(batch.count), 0)
            }
        }
        // numeric, tensor by tensor (positions beyond the longest sequence get zero gradient)
        var offset = 0
        var worstByTensor: [String: Double] = [:]
        for (ti, n) in weights.tensorSizes.enumerated() {
            var worst = 0.0
            for k in 0..<n {
                let i = offset + k
                let orig = weights.arena.base[i]
                // embedding rows feed a LayerNorm over few, small entries: a smaller step
                let h: Float = ti < 3 ? 1e-3 : 1e-2
                weights.arena.base[i] = orig + h
                let lp = Self.dot(enc.forward(batch).hidden(layer: cfgS.layers), gw)
                weights.arena.base[i] = orig - h
                let lm = Self.dot(enc.forward(batch).hidden(layer: cfgS.layers), gw)
                weights.arena.base[i] = orig
                let num = (lp - lm) / (2 * Double(h))
                worst = max(worst, Self.relErr(Double(grads.arena.base[i]), num))
            }
            worstByTensor[BertWeights.tensorNames[ti]] = worst
            offset += n
        }
        for (name, worst) in worstByTensor.sorted(by: { $0.key < $1.key }) {
            #expect(worst <= 1e-3, "encoder d\(name): worst error \(worst)")
        }
        // frozen base: no weight gradients at all, input gradient of the layer above identical
        var dinputFrozen = [Float](repeating: 0, count: N * C)
        _ = enc.forward(batch)
        batch.tokenIds.withUnsafeBufferPointer { ids in
            batch.cuSeqlens.withUnsafeBufferPointer { cu in
                dr_bert_backward(nil, nil, &dinputFrozen, &scratch, gw, &enc.workspace.acts, nil, &p, nil, &cfg, ids.baseAddress, nil,
                                 cu.baseAddress, Int64(batch.count), 0)
            }
        }
        let d = zip(dinput, dinputFrozen).map { abs($0 - $1) }.max()!
        #expect(d < 1e-6)
    }
}
