import CKernels
import Foundation

/// Training settings shared by every method unless a method's `training` or `replay` block
/// overrides them.
public struct TrainingDefaults: Codable, Equatable, Sendable {
    public var epochs: Int = ConfigDefaults.epochs
    public var learningRate: Float = ConfigDefaults.learningRate
    public var batchSize: Int = ConfigDefaults.batchSize
    public var replayShare: Double = ConfigDefaults.replayShare
    /// Replay budget in bytes; nil = `bufferExamples` times the mean stored size of a training
    /// example of the scenario (the same bytes for every method).
    public var bufferBytes: Int?
    public var bufferExamples: Int = ConfigDefaults.bufferExamples
    /// Tokens per utterance, [CLS]/[SEP] included (intent utterances are short).
    public var maxLength: Int = ConfigDefaults.maxLength
    public var optimizer: OptimizerConfig = OptimizerConfig()
    public var routerTraining: RouterConfig = RouterConfig()
    /// Data-parallel chunk size in rows (`ChunkedReduction`): each batch runs as chunks of this
    /// many rows on the run's threads (and MPI ranks), their gradients added in chunk order, so
    /// the result does not depend on the thread or rank count. 0 = one pass over the whole batch
    /// with BLAS's own threads.
    public var gradientChunk: Int = ConfigDefaults.gradientChunk
    /// MiB for the frozen prefixes of recurring evaluation and validation chunks (`PrefixCache`:
    /// exact, bit-identical logits); 0 = off. Only adapters above layer 0 leave a prefix to cache.
    public var prefixCacheMB: Int = ConfigDefaults.prefixCacheMB
    /// Inference chunks (evaluation, validation, router features, prototypes, stored logits) on
    /// the run's threads at once, each on single-threaded BLAS (true), or one after the other
    /// with BLAS's own threads (false, the default when nil: on the machine it was measured on,
    /// docs/RESULTS.md, it was no faster and took 270 MiB more). The numbers are the same either way
    /// (`DataParallelTests.parallelInferenceChunksAreTheInOrderRun`), so it is not part of the
    /// protocol hash: a speed choice only.
    public var parallelInference: Bool?
    /// Every linear layer of the frozen encoder through the packed-weight kernel
    /// (`dr_packed_matmul`: one FMA chain per output, split over the run's threads by output
    /// panels), not only the single-utterance path. Faster than OpenBLAS on the machines measured
    /// (docs/RESULTS.md, stop 16) and independent of the thread count by construction, but other
    /// bits than OpenBLAS's sums, so it is part of the protocol hash. Off by default until its R
    /// matrices have been compared on a full protocol.
    public var packedGemm: Bool = false
    /// The frozen encoder's linear layers in "fp32" (nil: the default) or "bf16": weights and
    /// activations rounded to bfloat16, products summed in fp32, through AVX512-BF16's dot
    /// product (`dr_packed_matmul_bf16`, twice the multiply-adds per instruction of fp32), for
    /// every batch size, forward and the backward's input gradients (the packed path of
    /// `packedGemm`). Other numbers than fp32, so part of the protocol hash. Refused on a CPU
    /// without AVX512-BF16 rather than falling back to fp32. The router's frozen features stay fp32.
    public var frozenPrecision: String?
    public init() {}

    /// `frozenPrecision` is "bf16".
    public var frozenBF16: Bool { frozenPrecision == "bf16" }

    /// Bounds of every field, named `training.<field>`.
    func validate() throws {
        typealias B = ConfigBounds
        try Bounds.check(epochs, B.epochs, "training.epochs")
        try Bounds.check(real: learningRate, B.learningRate, lowerOpen: true, "training.learningRate")
        try Bounds.check(batchSize, B.batchSize, "training.batchSize")
        try Bounds.check(real: replayShare, 0...1, upperOpen: true, "training.replayShare")
        try Bounds.check(bufferBytes, B.bufferBytes, "training.bufferBytes")
        try Bounds.check(bufferExamples, B.bufferExamples, "training.bufferExamples")
        try Bounds.check(maxLength, B.maxLength, "training.maxLength")
        try Bounds.check(gradientChunk, B.gradientChunk, "training.gradientChunk")
        try Bounds.check(prefixCacheMB, B.prefixCacheMB, "training.prefixCacheMB")
        if let f = frozenPrecision {
            guard f == "fp32" || f == "bf16" else {
                throw ConfigError.invalid(field: "training.frozenPrecision", reason: "\"\(f)\" is not one of \"fp32\", \"bf16\"")
            }
            if f == "bf16" && dr_bf16_available() == 0 {
                throw ConfigError.invalid(field: "training.frozenPrecision",
                                          reason: "\"bf16\" needs a CPU with AVX512-BF16, and this one has none (use \"fp32\")")
            }
        }
        let o = optimizer
        try Bounds.check(real: o.learningRate, B.learningRate, lowerOpen: true, "training.optimizer.learningRate")
        try Bounds.check(real: o.beta1, 0...1, upperOpen: true, "training.optimizer.beta1")
        try Bounds.check(real: o.beta2, 0...1, upperOpen: true, "training.optimizer.beta2")
        try Bounds.check(real: o.epsilon, 0...1, lowerOpen: true, "training.optimizer.epsilon")
        try Bounds.check(real: o.weightDecay, 0...1, "training.optimizer.weightDecay")
        try Bounds.check(real: o.clipNorm, 0...1e6, "training.optimizer.clipNorm")
        try Bounds.check(real: o.warmupFraction, 0...1, "training.optimizer.warmupFraction")
        let r = routerTraining
        try Bounds.check(r.epochs, B.routerEpochs, "training.routerTraining.epochs")
        try Bounds.check(r.batchSize, B.routerBatchSize, "training.routerTraining.batchSize")
        try Bounds.check(real: r.learningRate, B.learningRate, lowerOpen: true, "training.routerTraining.learningRate")
        try Bounds.check(r.newDomainExamples, B.routerNewDomainExamples, "training.routerTraining.newDomainExamples")
    }
}

extension TrainingDefaults {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case epochs, learningRate, batchSize, replayShare, bufferBytes, bufferExamples, maxLength, optimizer, routerTraining, gradientChunk, prefixCacheMB, parallelInference, packedGemm, frozenPrecision
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        let d = TrainingDefaults()
        epochs = try c.decodeIfPresent(Int.self, forKey: .epochs) ?? d.epochs
        learningRate = try c.decodeIfPresent(Float.self, forKey: .learningRate) ?? d.learningRate
        batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? d.batchSize
        replayShare = try c.decodeIfPresent(Double.self, forKey: .replayShare) ?? d.replayShare
        bufferBytes = try c.decodeIfPresent(Int.self, forKey: .bufferBytes)
        bufferExamples = try c.decodeIfPresent(Int.self, forKey: .bufferExamples) ?? d.bufferExamples
        maxLength = try c.decodeIfPresent(Int.self, forKey: .maxLength) ?? d.maxLength
        optimizer = try c.decodeIfPresent(OptimizerConfig.self, forKey: .optimizer) ?? d.optimizer
        routerTraining = try c.decodeIfPresent(RouterConfig.self, forKey: .routerTraining) ?? d.routerTraining
        gradientChunk = try c.decodeIfPresent(Int.self, forKey: .gradientChunk) ?? d.gradientChunk
        prefixCacheMB = try c.decodeIfPresent(Int.self, forKey: .prefixCacheMB) ?? d.prefixCacheMB
        parallelInference = try c.decodeIfPresent(Bool.self, forKey: .parallelInference)
        packedGemm = try c.decodeIfPresent(Bool.self, forKey: .packedGemm) ?? d.packedGemm
        frozenPrecision = try c.decodeIfPresent(String.self, forKey: .frozenPrecision)
    }
}

/// How the domain router is trained after each domain.
public struct RouterConfig: Codable, Equatable, Sendable {
    public var epochs: Int = 40
    public var batchSize: Int = 64
    public var learningRate: Float = 2e-3
    /// Examples of the newest domain used per router retraining (its training split is
    /// subsampled so the newest domain does not swamp the buffered ones).
    public var newDomainExamples: Int = 300
    /// Weight each domain's examples by 1/count so every domain counts equally (a balanced
    /// buffer); false = plain frequency weighting (the naive router that forgets).
    public var balanced: Bool = true
    public init() {}
}

extension RouterConfig {
    enum CodingKeys: String, CodingKey, CaseIterable { case epochs, batchSize, learningRate, newDomainExamples, balanced }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        let d = RouterConfig()
        epochs = try c.decodeIfPresent(Int.self, forKey: .epochs) ?? d.epochs
        batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize) ?? d.batchSize
        learningRate = try c.decodeIfPresent(Float.self, forKey: .learningRate) ?? d.learningRate
        newDomainExamples = try c.decodeIfPresent(Int.self, forKey: .newDomainExamples) ?? d.newDomainExamples
        balanced = try c.decodeIfPresent(Bool.self, forKey: .balanced) ?? d.balanced
    }
}
