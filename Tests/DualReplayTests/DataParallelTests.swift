import CKernels
import Foundation
import Testing
@testable import DualReplay

/// Data-parallel chunks (`ChunkedReduction`): the gradient is still the loss's gradient, a batch
/// in one chunk is the plain pass, and the parameters after several steps are bit-identical
/// whatever the number of threads and ranks that computed the chunks.
@Suite(.serialized) struct DataParallelTests {
    /// Nine rows over both domains, with logit and anchoring targets (every loss term).
    static func batch(_ m: ContinualModel, rows: Int = 9, seed: UInt64 = 3) -> TrainingBatch {
        var rng = SeededRandom(seed: seed)
        var tb = TrainingBatch()
        for i in 0..<rows {
            let d = i % 2, r = m.domains[d].classRange
            let ids: [Int32] = [1] + (0..<(2 + i % 4)).map { _ in Int32(3 + rng.next() % 15) } + [2]
            switch i % 3 {
            case 0: tb.append(ids: ids, gate: Int32(d), label: Int32(r.lowerBound + i % r.count), range: r)
            case 1: tb.append(ids: ids, gate: Int32(d), label: Int32(r.lowerBound), range: r, logits: rng.floats(r.count))
            default: tb.append(ids: ids, gate: Int32(d), label: -1, range: r, anchor: rng.floats(8))
            }
        }
        return tb
    }

    static let weights: LossWeights = { var w = LossWeights(); w.logitReplay = 0.7; w.anchor = 0.5; w.orthogonality = 0.3; return w }()

    static func specs() -> [(String, (inout ModelSpec) -> Void)] {
        [("adapter", { $0.adapter = true }), ("houlsby", { $0.adapter = true; $0.placement = .ffn }),
         ("olora", { $0.lora = true; $0.loraPerDomain = true }), ("full", { $0.fullFineTune = true })]
    }

    /// Parameters after `steps` AdamW steps on the same batches.
    /// `blasThreads` nil leaves BLAS as it is (ranks sharing one process must not change it).
    static func train(_ configure: (inout ModelSpec) -> Void, chunking: ChunkedReduction?, blasThreads: Int32? = 1, steps: Int = 4,
                      packedGemm: Bool = false, bf16: Bool = false) throws -> [Float] {
        let m = TrainingTests.model(configure)
        m.chunking = chunking
        if packedGemm || bf16 {
            var t = TrainingDefaults()
            t.packedGemm = packedGemm
            t.frozenPrecision = bf16 ? "bf16" : nil
            m.useParallelism(t, inference: m.inference)
            m.chunking = chunking
        }
        let saved = dr_blas_get_threads()
        if let blasThreads { dr_blas_set_threads(blasThreads) }
        defer { if blasThreads != nil { dr_blas_set_threads(saved) } }
        let adam = AdamWStep(config: OptimizerConfig())
        for s in 0..<steps { _ = try m.trainStep(batch(m, seed: UInt64(s)), weights: weights, optimizer: adam, lr: 1e-2) }
        return Array(m.store.values.buffer)
    }

    /// `training.packedGemm`: every frozen linear layer through the packed kernel. Other bits than
    /// OpenBLAS (the test would be vacuous otherwise) but the same training to rounding, and the
    /// same bits at 1, 2 and 3 threads (BLAS's and the kernel executor's), plain or chunked.
    @Test func packedGemmIsCloseToOpenBLASAndThreadIndependent() throws {
        guard dr_packed_matmul_isa() != 0 else { return }
        let spec: (inout ModelSpec) -> Void = { $0.adapter = true }
        let plain = try Self.train(spec, chunking: nil)
        let saved = Parallelism.threads
        defer { setComputeThreads(saved) }
        setComputeThreads(1)
        let one = try Self.train(spec, chunking: nil, blasThreads: nil, packedGemm: true)
        #expect(one != plain, "the packed path did not run")
        #expect(zip(plain, one).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($0)) }, "packed training drifted from OpenBLAS's")
        // the transposed packs for the backward pass are there, and the gradients are still right
        let m = TrainingTests.model(spec)
        var t = TrainingDefaults()
        t.packedGemm = true
        m.useParallelism(t, inference: m.inference)
        #expect(m.baseParams.packed?.pointee.qkv_t != nil)
        try TrainingTests.checkModelGradients(m, name: "packedGemm adapter", groups: ["adapter", "gate", "head"])
        for t in [2, 3] {
            setComputeThreads(t)
            #expect(try Self.train(spec, chunking: nil, blasThreads: nil, packedGemm: true) == one, "\(t) threads differ from 1")
            #expect(try Self.train(spec, chunking: ChunkedReduction(chunkSize: 64, threads: t), blasThreads: nil, packedGemm: true) == one,
                    "one chunk on \(t) threads differs from the plain pass")
        }
    }

    /// `training.frozenPrecision` "bf16": the frozen linear layers in bfloat16. Its gradients are
    /// the fp32 model's to bfloat16 rounding (not bit for bit: the test would be vacuous), the
    /// bf16 packs are used forward and backward, and the training is the same bits at 1, 2 and 3
    /// threads, plain or in one chunk. On a CPU without AVX512-BF16 the option is refused.
    @Test func bf16FrozenLayersAreCloseToFP32AndThreadIndependent() throws {
        var cfg = TrainingDefaults()
        cfg.frozenPrecision = "bf16"
        guard dr_bf16_available() != 0 else {
            #expect(throws: ConfigError.self) { try cfg.validate() }
            return
        }
        try cfg.validate()
        let spec: (inout ModelSpec) -> Void = { $0.adapter = true }
        func gradients(_ bf16: Bool) throws -> (grads: [Float], model: ContinualModel) {
            let m = TrainingTests.model(spec)
            if bf16 { m.useParallelism(cfg, inference: m.inference) }
            _ = try m.computeGradients(Self.batch(m), weights: Self.weights)
            return (Array(m.store.grads.buffer), m)
        }
        let (g32, _) = try gradients(false)
        let (g16, m16) = try gradients(true)
        #expect(m16.baseParams.packed?.pointee.qkv16 != nil && m16.baseParams.packed?.pointee.qkv_t16 != nil)
        #expect(m16.base.params.packed?.pointee.qkv16 == nil, "the shared fp32 table must stay fp32")
        var dot = 0.0, n32 = 0.0, diff = 0.0
        for (a, b) in zip(g32, g16) { dot += Double(a) * Double(b); n32 += Double(a) * Double(a); diff += Double(a - b) * Double(a - b) }
        #expect(g16 != g32, "the bf16 path did not run")
        #expect(n32 > 0 && (diff / n32).squareRoot() < 0.03, "bf16 gradients off by \((diff / max(n32, 1e-30)).squareRoot()) (relative L2)")
        let saved = Parallelism.threads
        defer { setComputeThreads(saved) }
        setComputeThreads(1)
        let one = try Self.train(spec, chunking: nil, blasThreads: nil, bf16: true)
        for t in [2, 3] {
            setComputeThreads(t)
            #expect(try Self.train(spec, chunking: nil, blasThreads: nil, bf16: true) == one, "\(t) threads differ from 1")
            #expect(try Self.train(spec, chunking: ChunkedReduction(chunkSize: 64, threads: t), blasThreads: nil, bf16: true) == one,
                    "one chunk on \(t) threads differs from the plain pass")
        }
        var bad = TrainingDefaults()
        bad.frozenPrecision = "fp16"
        #expect(throws: ConfigError.self) { try bad.validate() }
    }

    @Test func chunkedGradientsMatchFiniteDifferences() throws {
        for (name, spec) in Self.specs() where name != "full" {
            let m = TrainingTests.model(spec)
            m.chunking = ChunkedReduction(chunkSize: 1, threads: 2)
            try TrainingTests.checkModelGradients(m, name: "chunked \(name)", groups: ["adapter", "gate", "head", "lora"])
        }
    }

    @Test func oneChunkIsThePlainPass() throws {
        for (name, spec) in Self.specs() {
            let plain = try Self.train(spec, chunking: nil)
            let one = try Self.train(spec, chunking: ChunkedReduction(chunkSize: 64, threads: 2))
            #expect(plain == one, "\(name): a batch in one chunk must be the plain pass")
        }
    }

    @Test func chunkedStepsAreIdenticalForAnyThreadCount() throws {
        for (name, spec) in Self.specs() {
            let one = try Self.train(spec, chunking: ChunkedReduction(chunkSize: 2, threads: 1))
            for t in [2, 3, 5] {
                let many = try Self.train(spec, chunking: ChunkedReduction(chunkSize: 2, threads: t), blasThreads: 2)
                #expect(one == many, "\(name): \(t) threads differ from 1")
            }
            // several chunks really change the summation order (the test would be vacuous otherwise)
            let plain = try Self.train(spec, chunking: nil)
            #expect(plain != one, "\(name): chunks of 2 gave exactly the one-pass result")
            let close = zip(plain, one).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($0)) }
            #expect(close, "\(name): chunked training drifted from the one-pass result")
        }
    }

    /// Parameters each in-process rank ends with, one thread per rank (a dispatch pool may run
    /// fewer at once, and ranks wait for each other); BLAS single-threaded for the whole group.
    static func trainOnRanks(_ ranks: Int, chunkSize: Int, threads: @escaping (Int) -> Int) -> [[Float]] {
        let spec: (inout ModelSpec) -> Void = { $0.adapter = true }
        let group = LoopbackGroup(size: ranks)
        let saved = dr_blas_get_threads()
        dr_blas_set_threads(1)
        defer { dr_blas_set_threads(saved) }
        final class Results: @unchecked Sendable { var byRank: [[Float]]; init(_ n: Int) { byRank = Array(repeating: [], count: n) } }
        let results = Results(ranks)
        let lock = NSLock(), done = DispatchGroup()
        for r in 0..<ranks {
            done.enter()
            Thread {
                let out = try? Self.train(spec, chunking: ChunkedReduction(chunkSize: chunkSize, threads: threads(r), collective: group.rank(r)), blasThreads: nil)
                lock.lock(); results.byRank[r] = out ?? []; lock.unlock()
                done.leave()
            }.start()
        }
        done.wait()
        return results.byRank
    }

    @Test(arguments: [2, 3, 4])
    func chunkedStepsAreIdenticalForAnyRankCount(ranks: Int) throws {
        let reference = try Self.train({ $0.adapter = true }, chunking: ChunkedReduction(chunkSize: 2, threads: 1))
        let byRank = Self.trainOnRanks(ranks, chunkSize: 2) { 1 + $0 % 2 }
        for r in 0..<ranks { #expect(byRank[r] == reference, "rank \(r) of \(ranks) differs from the one-process run") }
    }

    /// The gradient half of the communication figures: one gathered step per training step, and
    /// per step every chunk's trainable gradients and its loss parts (8 floats), on every rank;
    /// the chunks' own threads count nothing (one process moves nothing, but still gathers).
    @Test(arguments: [1, 2, 3])
    func gatheredStepsAndBytesAreCounted(ranks: Int) throws {
        let steps = 3, chunkSize = 2
        let got = Self.onRanks(ranks) { c -> (CommunicationStats, rows: Int, floats: Int) in
            let m = TrainingTests.model { $0.adapter = true }
            let red = ChunkedReduction(chunkSize: chunkSize, threads: 1, collective: c)
            m.chunking = red
            let adam = AdamWStep(config: OptimizerConfig())
            var rows = 0
            for s in 0..<steps {
                let tb = Self.batch(m, seed: UInt64(s))
                rows = tb.count
                _ = try m.trainStep(tb, weights: Self.weights, optimizer: adam, lr: 1e-2)
            }
            let floats = m.store.trainableSegments { $0.group != "router" }.reduce(0) { $0 + $1.count }
            return (red.communication, rows, floats)
        }
        for (r, result) in got.enumerated() {
            let (c, rows, floats) = try result.get()
            let chunks = (rows + chunkSize - 1) / chunkSize
            #expect(chunks > 1)
            #expect(c.gradientSteps == steps && c.inferencePasses == 0, "rank \(r) of \(ranks): \(c)")
            #expect(c.gradientBytes == steps * chunks * (floats + 8) * 4, "rank \(r) of \(ranks): \(c.gradientBytes) bytes")
            #expect(c.gradientSeconds >= 0 && c.seconds == c.gradientSeconds)
        }
    }

    /// A batch with fewer chunks than ranks (an epoch's last, short batch) leaves the ranks past
    /// its chunks idle: same result. (Starting more ranks than a full batch has chunks is refused
    /// by the CLI, MPITests.)
    @Test func ranksPastAShortBatchsChunksIdle() throws {
        let reference = try Self.train({ $0.adapter = true }, chunking: ChunkedReduction(chunkSize: 4, threads: 1))
        let byRank = Self.trainOnRanks(6, chunkSize: 4) { _ in 1 }
        for r in 0..<6 { #expect(byRank[r] == reference, "rank \(r) of 6 differs from the one-process run") }
    }

    // MARK: - sharded inference

    /// `body(rank's collective)` on `ranks` in-process ranks, one thread each, BLAS
    /// single-threaded for the whole group; every rank's outcome, in rank order.
    static func onRanks<T>(_ ranks: Int, _ body: @escaping (Collective) throws -> T) -> [Result<T, Error>] {
        let group = LoopbackGroup(size: ranks)
        let saved = dr_blas_get_threads()
        dr_blas_set_threads(1)
        defer { dr_blas_set_threads(saved) }
        let results = RankResults<T>(ranks)
        let lock = NSLock(), done = DispatchGroup()
        for r in 0..<ranks {
            done.enter()
            Thread {
                let out = Result { try body(group.rank(r)) }
                lock.lock(); results.byRank[r] = out; lock.unlock()
                done.leave()
            }.start()
        }
        done.wait()
        return results.byRank.map { $0! }
    }

    /// Uneven chunk outputs (empty ones, NaN and infinity bit patterns): every rank gets every
    /// chunk's output in chunk order, bit for bit; chunk i ran on rank (i + key) mod N and nowhere else.
    @Test(arguments: [1, 2, 3, 4])
    func shardedMapGathersEveryChunkOnEveryRank(ranks: Int) throws {
        let count = 11
        func output(_ i: Int) -> [Float] {
            let bits: [UInt32] = [0x7FC0_0001 &+ UInt32(i), 0xFF80_0000, 0x8000_0000, UInt32(i) &* 0x9E37_79B9]
            return (0..<(i % 4 == 1 ? 0 : 3 + i)).map { Float(bitPattern: bits[$0 % 4] &+ UInt32($0 / 4)) }
        }
        let rows = { (i: Int) in 1 + i % 3 }
        let got = Self.onRanks(ranks) { c -> (out: [[Float]], ran: [Int], tally: ShardedInference.Tally, again: [[Int32]], ranAgain: [Int],
                                               communication: CommunicationStats) in
            let s = ShardedInference(collective: c)
            var ran: [Int] = [], ranAgain: [Int] = []
            let out = try s.map(count, rows: rows) { i in ran.append(i); return output(i) }
            // a second map of another type over the same group, with a key: it starts on rank 7 mod N
            let again = try s.map(3, rows: { _ in 2 }, key: 7) { i in ranAgain.append(i); return [Int32(i), Int32(-i)] }
            return (out, ran, s.tally, again, ranAgain, s.communication)
        }
        let want = (0..<count).map { output($0).map(\.bitPattern) }
        var chunks = 0, utterances = 0
        for (r, result) in got.enumerated() {
            let g = try result.get()
            #expect(g.out.map { $0.map(\.bitPattern) } == want, "rank \(r) of \(ranks): gathered outputs differ")
            #expect(g.again == (0..<3).map { [Int32($0), Int32(-$0)] })
            #expect(g.ran == Array(stride(from: r, to: count, by: ranks)), "rank \(r) of \(ranks) ran \(g.ran)")
            #expect(g.ranAgain == (0..<3).filter { ($0 + 7) % ranks == r }, "rank \(r) of \(ranks) ran \(g.ranAgain) of the keyed map")
            let mine = g.ran.count + g.ranAgain.count
            #expect(g.tally.chunks == mine && g.tally.totalChunks == count + 3 && g.tally.passes == 2)
            #expect(g.tally.totalRows == (0..<count).map(rows).reduce(0, +) + 6)
            chunks += g.tally.chunks
            utterances += g.tally.rows
            // what every rank received: per pass the N sizes (8 B each), per chunk its count word and
            // its bytes rounded up to words (Float and Int32 are one word each)
            let words = want.reduce(0) { $0 + 1 + $1.count } + 3 * 3
            #expect(g.communication.inferencePasses == (ranks > 1 ? 2 : 0) && g.communication.gradientSteps == 0)
            #expect(g.communication.inferenceBytes == (ranks > 1 ? 4 * words + 2 * 8 * ranks : 0), "rank \(r) of \(ranks): \(g.communication)")
        }
        #expect(chunks == count + 3 && utterances == (0..<count).map(rows).reduce(0, +) + 6, "every chunk computed exactly once")
    }

    /// A chunk that throws on one rank: every rank throws the same `JobError.rankFailed` naming
    /// that rank (none waits for it), and the group still works for the next collective call. One
    /// process: the error as it was thrown.
    @Test func failedChunkOnOneRankFailsEveryRankAlike() throws {
        let got = Self.onRanks(3) { c -> [[Int32]] in
            let s = ShardedInference(collective: c)
            let failed = JobError.rankFailed(rank: 1, size: 3, message: "chunk 4 cannot be read")
            #expect(throws: failed, "rank \(c.rank)") {
                try s.map(7, rows: { _ in 1 }) { i -> [Int32] in
                    if i == 4 { throw RunnerError.data("chunk 4 cannot be read") }
                    return [Int32(i)]
                }
            }
            #expect(failed.localizedDescription == "rank 1 of 3: chunk 4 cannot be read")
            return try s.map(4, rows: { _ in 1 }) { [Int32($0)] }
        }
        for r in got { #expect(try r.get() == [[0], [1], [2], [3]]) }
        let one = ShardedInference()
        #expect(throws: RunnerError.data("x")) { try one.map(3, rows: { _ in 1 }) { i -> [Int32] in if i == 2 { throw RunnerError.data("x") }; return [] } }
        #expect(try one.map(0, rows: { _ in 1 }) { _ -> [Int32] in Issue.record("no chunk to run"); return [] }.isEmpty)
    }

    /// A gradient chunk that fails on one rank (a bad label in its rows) fails the step on every
    /// rank alike, before the gather, so no rank is left waiting (a caller that skips a failed
    /// step, like a gate refit, would otherwise desynchronise the ranks); the group still works.
    @Test func failedGradientChunkOnOneRankFailsEveryRank() throws {
        let got = Self.onRanks(3) { c -> [UInt32] in
            let m = TrainingTests.model { $0.adapter = true }
            m.chunking = ChunkedReduction(chunkSize: 3, threads: 1, collective: c)
            var bad = Self.batch(m)
            bad.labels[7] = 999                                 // rows 6-8: the third chunk's
            do {
                _ = try m.computeGradients(bad, weights: Self.weights)
                Issue.record("rank \(c.rank): the bad chunk did not fail the step")
            } catch let JobError.rankFailed(rank, size, message) {
                #expect(rank == 2 && size == 3 && message.contains("label"), "rank \(c.rank): \(rank) \(size) \(message)")
            }
            m.store.zeroGrads()
            _ = try m.computeGradients(Self.batch(m), weights: Self.weights)
            return Array(m.store.grads.buffer).map(\.bitPattern)
        }
        let grads = try got.map { try $0.get() }
        #expect(grads.allSatisfy { $0 == grads[0] } && grads[0].contains { $0 != 0 })
        // one process: the error itself
        let m = TrainingTests.model { $0.adapter = true }
        m.chunking = ChunkedReduction(chunkSize: 3, threads: 1)
        var bad = Self.batch(m)
        bad.labels[7] = 999
        #expect(throws: TrainingError.self) { _ = try m.computeGradients(bad, weights: Self.weights) }
    }

    /// What one rank keeps of a sharded Dual-Replay run: validation scores, R rows (bits), probe
    /// and multi-intent scores, final parameters and buffer logits, and its tally.
    struct ShardedRun {
        var validation: [[UInt64]] = [], rows: [[UInt64]] = [], confusion: [[[Int]]] = [], diagnostics: [UInt64] = []
        var parameters: [UInt32] = [], bufferLogits: [UInt32] = []
        var tally = ShardedInference.Tally()
    }

    /// Three domains with 75 validation and 90 test rows each (canonical chunks of 64: two per
    /// domain), chunked gradients, logit replay, head realignment and prototype routing, on the
    /// tiny random encoder; every sharded pass runs over `collective`'s ranks.
    static func shardedRun(_ collective: Collective, inferenceThreads: Int = 1) throws -> ShardedRun {
        let enc = try StateTests.encoder()
        var cfg = StateTests.config()
        cfg.training?.gradientChunk = 2
        let training = cfg.training!
        var settings = try MethodSettings.resolve(cfg.methods[0], training: training)
        settings.realignHeadSteps = 5
        let tokens = TokenCache(tokenizer: enc.tokenizer, maxLength: training.maxLength)
        let trainer = DomainTrainer(settings: settings, training: training, encoder: enc, tokens: tokens)
        trainer.inference = ShardedInference(collective: collective)
        let scenario = try Scenario(domains: [("a", 0), ("b", 6), ("c", 12)].map { StateTests.domain($0, base: $1, val: 25, test: 30) })
        let st = try trainer.makeLearner(seed: 3, byteBudget: 6000, generalTexts: StateTests.general)
        st.model.inferenceThreads = inferenceThreads
        #expect(st.model.inference === trainer.inference && st.model.chunking?.collective === collective)
        var run = ShardedRun()
        let bits = { (x: [Double]) in x.map(\.bitPattern) }
        for (k, d) in scenario.domains.enumerated() {
            let seen = Array(scenario.domains[0...k])
            let o = try trainer.learn(st, domain: d, validation: seen.map(\.val), label: "\(k + 1)")
            run.validation.append(bits(o.validationF1))
            let row = try Evaluator(predictor: trainer.predictor(st), tokens: tokens).row(seen.map(\.test))
            run.rows += [bits(row.routedF1), bits(row.oracleF1), bits(row.routedAccuracy), bits(row.oracleAccuracy), bits(row.routerAccuracy.map { [$0] } ?? [])]
            run.confusion.append(row.routerConfusion ?? [])
        }
        let ev = Evaluator(predictor: trainer.predictor(st), tokens: tokens)
        let a = scenario.domains[0]
        // two-intent utterances of domain a (its keywords 0-1 and 2-3)
        let multi = (0..<70).map { i in
            IntentExample(text: "w\(i % 2) w\(2 + i % 2) w3\(i % 10)", intents: [a.intents[0], a.intents[1]], domain: a.name, split: .test)
        }
        let mi = try ev.multiIntentScore(domain: 0, rows: multi, singleIntentAccuracy: 0.9)
        run.diagnostics = [try ev.probeF1(domain: 1, train: scenario.domains[1].train, test: scenario.domains[1].test).bitPattern,
                           mi.anyHit.bitPattern, mi.domainHit.bitPattern]
        run.parameters = st.model.store.values.buffer.map(\.bitPattern)
        run.bufferLogits = (st.dual?.items(of: 2) ?? []).flatMap { $0.logits ?? [] }.map(\.bitPattern)
        run.tally = trainer.inference.tally
        return run
    }

    /// The sharded run on 2, 3 and 4 in-process ranks is the one-process run bit for bit (every
    /// validation score, R-matrix entry, diagnostic, parameter and stored logit), and each rank
    /// computed its share of the inference chunks: within one chunk per pass of 1/N of them, the
    /// shares adding up to the one-process total.
    @Test(arguments: [2, 3, 4])
    func shardedInferenceIsTheOneProcessRunForAnyRankCount(ranks: Int) throws {
        let reference = try Self.onRanks(1) { try Self.shardedRun($0) }[0].get()
        let T = reference.tally
        #expect(T.chunks == T.totalChunks && T.rows == T.totalRows && T.totalChunks > T.passes, "\(T)")
        #expect(!reference.bufferLogits.isEmpty, "logit replay stored no logits: the check would be vacuous")
        let byRank = try Self.onRanks(ranks) { try Self.shardedRun($0) }.map { try $0.get() }
        var chunks = 0, rows = 0
        for (r, run) in byRank.enumerated() {
            #expect(run.validation == reference.validation, "rank \(r) of \(ranks): validation scores differ")
            #expect(run.rows == reference.rows && run.confusion == reference.confusion, "rank \(r) of \(ranks): R rows differ")
            #expect(run.diagnostics == reference.diagnostics, "rank \(r) of \(ranks): probe or multi-intent scores differ")
            #expect(run.parameters == reference.parameters, "rank \(r) of \(ranks): parameters differ")
            #expect(run.bufferLogits == reference.bufferLogits, "rank \(r) of \(ranks): stored logits differ")
            let t = run.tally
            #expect(t.totalChunks == T.totalChunks && t.totalRows == T.totalRows && t.passes == T.passes)
            #expect(abs(t.chunks * ranks - T.totalChunks) <= ranks * T.passes, "rank \(r) of \(ranks): \(t.chunks) of \(T.totalChunks) chunks")
            #expect(t.chunks > 0 && t.chunks < T.totalChunks, "rank \(r) of \(ranks) did not take a share: \(t)")
            chunks += t.chunks
            rows += t.rows
        }
        #expect(chunks == T.totalChunks && rows == T.totalRows, "every chunk computed by exactly one rank")
    }
}

/// What each in-process rank's thread returned (`DataParallelTests.onRanks`).
final class RankResults<T>: @unchecked Sendable {
    var byRank: [Result<T, Error>?]
    init(_ n: Int) { byRank = Array(repeating: nil, count: n) }
}

/// In-process ranks for tests: each rank a thread; allGather meets at a barrier.
final class LoopbackGroup {
    let size: Int
    private let cond = NSCondition()
    private var arrived = 0, generation = 0
    private var slots: [[Float]]
    private var words: [UInt64]
    private var bytes: [UInt8] = []
    init(size: Int) { self.size = size; slots = Array(repeating: [], count: size); words = Array(repeating: 0, count: size) }

    func rank(_ r: Int) -> Collective { Member(group: self, rank: r) }

    /// Every rank deposits, waits for the others, reads, and waits again before the next round.
    func exchange<T>(_ r: Int, deposit: () -> Void, read: () -> T) -> T {
        barrier { deposit() }
        let v = read()
        barrier {}
        return v
    }
    private func barrier(_ first: () -> Void) {
        cond.lock()
        first()
        let g = generation
        arrived += 1
        if arrived == size { arrived = 0; generation += 1; cond.broadcast() } else { while generation == g { cond.wait() } }
        cond.unlock()
    }

    final class Member: Collective {
        let group: LoopbackGroup
        let rank: Int
        init(group: LoopbackGroup, rank: Int) { self.group = group; self.rank = rank }
        var size: Int { group.size }
        func allGather(_ send: UnsafeBufferPointer<Float>, into recv: UnsafeMutableBufferPointer<Float>, counts: [Int]) throws {
            let all: [Float] = group.exchange(rank, deposit: { group.slots[rank] = Array(send) }, read: { group.slots.flatMap { $0 } })
            precondition(all.count == recv.count && counts.reduce(0, +) == all.count)
            for i in all.indices { recv[i] = all[i] }
        }
        func allGather(_ value: UInt64) throws -> [UInt64] { group.exchange(rank, deposit: { group.words[rank] = value }, read: { group.words }) }
        func broadcast(_ bytes: [UInt8], root: Int) throws -> [UInt8] {
            group.exchange(rank, deposit: { if rank == root { group.bytes = bytes } }, read: { group.bytes })
        }
        func barrier() throws { group.exchange(rank, deposit: {}, read: { () }) }
        func abort(code: Int32) -> Never { fatalError("rank \(rank) aborted with code \(code)") }
    }
}
