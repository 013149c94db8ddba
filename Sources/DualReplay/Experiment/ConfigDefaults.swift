import Foundation

/// Every default of an experiment config, written once: what an absent field resolves to.
/// docs/CONFIG.md lists the same values. Defaults that depend on the method's kind are
/// functions of it; those that depend on whether the router is on take the resolved value.
/// (Router training and the optimizer keep their defaults in `RouterConfig` and `OptimizerConfig`.)
public enum ConfigDefaults {
    // MARK: experiment
    public static let orderings = 5
    public static let evalSplit: EvalSplit = .test
    public static let threads = 1
    public static let seed: UInt64 = 0
    public static let latencySamples = 200
    public static let diagnostics = false
    public static let probeTrainPerDomain = 600
    public static let model = "models/all-MiniLM-L6-v2"

    // MARK: training (shared by every method)
    public static let epochs = 3
    public static let learningRate: Float = 1e-3
    public static let batchSize = 32
    public static let replayShare = 0.2
    public static let bufferExamples = 1000
    public static let maxLength = 64
    public static let gradientChunk = 0
    public static let prefixCacheMB = 512

    // MARK: data files
    public static let multiLabel: MultiLabelPolicy = .drop
    public static let unknownLabels: UnknownLabelPolicy = .reject
    public static let allowSharedLabels = false

    // MARK: method: adapter
    public static let bottleneck = 64
    public static let placement: AdapterPlacement = .output
    public static let activation: AdapterActivation = .gelu
    public static let gateInit: GateInit = .ones
    public static let gateMaskFraction: Float = 0.5
    public static let freezeOldGates = true
    public static let protectOldChannels: Float = 0
    public static let sharedLearningRateScale: Float = 1
    // MARK: method: heads
    public static let freezeOldHeads = false
    public static let realignSteps = 0
    public static let driftRefitSteps = 0
    /// `dualreplay remediate` on a state whose method has the remedy off.
    public static let remediateSteps = 100
    // realignLearningRate: the method's learning rate
    // MARK: method: router
    public static let routerBalanced = true
    public static let prototypeTemperature: Float = 0.02
    public static let prototypeWeight: Float = 2
    public static let rescoreTopK = 1
    public static let rescoreThreshold: Float = 0.9
    // MARK: method: LoRA
    public static let loraRank = 8
    public static let loraAlpha: Float = 16
    // MARK: method: dual-stream buffer
    public static let domainFraction = 0.7
    public static let floorWeight = 0.2
    public static let samplingFloorWeight = 0.2
    public static let forgettingEMA = 0.5
    // MARK: method: multi-intent augmentation (on when the method has a `multiIntent` block)
    public static let multiIntentAugmentShare = 0.2
    public static let multiIntentConjunctions = ["and", "and also", "and then"]
    public static let multiIntentMaxIntents = 2
    /// The set rule's thresholds tried on validation (`Diagnostics.chooseSetThreshold`).
    public static let setThresholdGrid: [Double] = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
    // MARK: method: references
    public static let architecture: ReferenceArchitecture = .adapter

    // MARK: per kind
    /// The router is on for dual-replay (any method may turn it on: an ablation of routing).
    public static func routerEnabled(_ kind: MethodKind) -> Bool { kind == .dualReplay }
    /// Prototype routing is fused into the router wherever the router is on.
    public static func prototypes(routerEnabled: Bool) -> RouterPrototypes { routerEnabled ? .fused : .off }
    /// With a router the domain is known at inference, so the loss is over the domain's intents.
    public static func lossScope(routerEnabled: Bool) -> LossScope { routerEnabled ? .domain : .seen }
    /// DER's logit replay; for dual-replay, distillation on its domain stream (chosen on validation).
    public static func logitReplay(_ kind: MethodKind) -> Float { kind == .der || kind == .dualReplay ? 0.5 : 0 }
    /// The general stream's anchoring loss (dual-replay).
    public static func anchor(_ kind: MethodKind) -> Float { kind == .dualReplay ? 0.1 : 0 }
    /// O-LoRA's orthogonality between the LoRA sets of different domains.
    public static func orthogonality(_ kind: MethodKind) -> Float { kind == .olora ? 0.1 : 0 }
}

/// Upper and lower bounds of every size in a config, written once (docs/CONFIG.md lists them).
/// They keep a typo from turning into a terabyte allocation; the model-dependent checks (layers,
/// positions, memory) come later, in `ExperimentSetup.checkResources`.
public enum ConfigBounds {
    public static let epochs = 1...1000
    public static let batchSize = 2...4096
    public static let learningRate: ClosedRange<Float> = 0...1           // > 0
    public static let bottleneck = 1...4096
    public static let layerIndex = 0...128
    public static let loraRank = 1...1024
    public static let loraAlpha: ClosedRange<Float> = 0...4096           // > 0
    public static let realignSteps = 0...100_000
    public static let driftRefitSteps = 0...100_000
    public static let rescoreTopK = 1...1000
    public static let prototypeTemperature: ClosedRange<Float> = 0...100 // > 0
    public static let prototypeWeight: ClosedRange<Float> = 0...100
    public static let lossWeight: ClosedRange<Float> = 0...1000
    public static let maxLength = 3...512
    public static let gradientChunk = 0...4096
    public static let prefixCacheMB = 0...(1 << 20)
    public static let bufferBytes = 1...(1 << 36)
    public static let bufferExamples = 1...10_000_000
    public static let routerEpochs = 1...10_000
    public static let routerBatchSize = 1...65_536
    public static let routerNewDomainExamples = 1...10_000_000
    public static let syntheticDomains = 1...1000
    public static let syntheticIntentsPerDomain = 1...100
    public static let syntheticPerIntent = 1...100_000
    public static let syntheticMultiIntentPerDomain = 0...100_000
    public static let syntheticHeadTailSkew = 0.0...8
    public static let perDomainCap = 1...10_000_000
    public static let orderings = 1...1000
    public static let threads = 1...256
    public static let latencySamples = 0...1_000_000
    public static let probeTrainPerDomain = 2...1_000_000
    public static let multiIntentAugmentShare: ClosedRange<Double> = 0...4
    public static let multiIntentMaxIntents = 2...5
    public static let multiIntentConjunctionBytes = 32
}
