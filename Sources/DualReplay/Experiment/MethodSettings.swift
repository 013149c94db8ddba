import Foundation

/// A method with every field resolved (from its config, the experiment's `training` block and
/// `ConfigDefaults`): what training, the state manifest and the results read.
public struct MethodSettings: Codable, Equatable, Sendable {
    public var name: String
    public var kind: MethodKind
    public var epochs: Int
    public var learningRate: Float
    public var batchSize: Int
    public var replayShare: Double
    public var router: Bool
    public var spec: ModelSpec
    public var gateInit: GateInit
    public var gateMaskFraction: Float
    public var freezeOldGates: Bool
    public var freezeOldHeads: Bool
    public var protectOldChannels: Float
    public var loss: LossWeights
    public var domainFraction: Double
    public var floorWeight: Double
    public var samplingFloorWeight: Double
    public var forgettingEMA: Double
    public var routerBalanced: Bool
    /// true: softmax over every seen intent; false: over the example's domain.
    public var lossOverSeen: Bool
    /// Shared adapter learning-rate multiplier after the first domain (1 = off).
    public var sharedLRScale: Float
    /// Head realignment steps after each domain (0 = off), at `realignLearningRate`.
    public var realignHeadSteps: Int
    public var realignLearningRate: Float
    /// Router head rescoring: candidates in all (1 = off), below this router confidence.
    public var routerRescoreTopK: Int
    public var routerRescoreThreshold: Float
    /// Alignment-drift remedy after each domain (`GateRefit`): Adam steps of a fresh gate row and
    /// head for each earlier domain the drift check flags (nil or 0 = off), at this learning rate
    /// (nil = the method's). Optional so that states saved before the remedy existed still load.
    public var driftRefitSteps: Int?
    public var driftRefitLearningRate: Float?
    /// Multi-intent augmentation (nil = off; absent from states and results saved before it existed).
    public var multiIntent: MultiIntentAugmentation?
    /// Dual-Replay's quotas capped at what each domain holds, the rest redistributed
    /// (`replay.redistribute`; nil = off, and absent from states saved before it existed).
    public var redistributeQuotas: Bool? = nil

    public static func resolve(_ m: MethodConfig, training t: TrainingDefaults) throws -> MethodSettings {
        typealias D = ConfigDefaults
        let arch = m.architecture ?? D.architecture
        var spec = ModelSpec()
        switch m.kind {
        case .fullFT: spec.fullFineTune = true
        case .lora, .loraReplay, .der: spec.lora = true
        case .olora: spec.lora = true; spec.loraPerDomain = true
        case .dualReplay: spec.adapter = true
        case .joint, .single: if arch == .adapter { spec.adapter = true } else { spec.lora = true }
        }
        spec.bottleneck = m.adapter.bottleneck ?? D.bottleneck
        spec.adapterLayers = m.adapter.layers
        spec.placement = m.adapter.placement ?? D.placement
        spec.activation = m.adapter.activation ?? D.activation
        spec.loraRank = m.lora.rank ?? D.loraRank
        spec.loraAlpha = m.lora.alpha ?? D.loraAlpha
        spec.routerLayer = m.router.layer
        let routed = m.router.enabled ?? D.routerEnabled(m.kind)
        let p = m.router.prototypes
        if let mode = (p.mode ?? D.prototypes(routerEnabled: routed)).mode {
            spec.routerPrototypes = PrototypeRouting(mode: mode, temperature: p.temperature ?? D.prototypeTemperature,
                                                     weight: p.weight ?? D.prototypeWeight)
        }
        var loss = LossWeights()
        loss.logitReplay = m.loss.logitReplay ?? D.logitReplay(m.kind)
        loss.anchor = m.loss.anchor ?? D.anchor(m.kind)
        loss.orthogonality = m.loss.orthogonality ?? D.orthogonality(m.kind)
        let lr = m.training.learningRate ?? t.learningRate
        let s = MethodSettings(
            name: m.name ?? m.kind.rawValue, kind: m.kind,
            epochs: m.training.epochs ?? t.epochs, learningRate: lr, batchSize: m.training.batchSize ?? t.batchSize,
            replayShare: m.kind.usesReplay ? (m.replay.share ?? t.replayShare) : 0,
            router: routed, spec: spec,
            gateInit: m.adapter.gateInit ?? D.gateInit, gateMaskFraction: m.adapter.gateMaskFraction ?? D.gateMaskFraction,
            freezeOldGates: m.adapter.freezeOldGates ?? D.freezeOldGates, freezeOldHeads: m.heads.freezeOld ?? D.freezeOldHeads,
            protectOldChannels: m.adapter.protectOldChannels ?? D.protectOldChannels, loss: loss,
            domainFraction: m.replay.domainFraction ?? D.domainFraction, floorWeight: m.replay.floorWeight ?? D.floorWeight,
            samplingFloorWeight: m.replay.samplingFloorWeight ?? D.samplingFloorWeight,
            forgettingEMA: m.replay.forgettingEMA ?? D.forgettingEMA,
            routerBalanced: m.router.balanced ?? D.routerBalanced,
            lossOverSeen: (m.loss.scope ?? D.lossScope(routerEnabled: routed)) == .seen,
            sharedLRScale: m.adapter.sharedLearningRateScale ?? D.sharedLearningRateScale,
            realignHeadSteps: m.heads.realignSteps ?? D.realignSteps, realignLearningRate: m.heads.realignLearningRate ?? lr,
            routerRescoreTopK: m.router.rescore.topK ?? D.rescoreTopK,
            routerRescoreThreshold: m.router.rescore.threshold ?? D.rescoreThreshold,
            driftRefitSteps: (m.heads.driftRefitSteps ?? D.driftRefitSteps) > 0 ? (m.heads.driftRefitSteps ?? D.driftRefitSteps) : nil,
            driftRefitLearningRate: m.heads.driftRefitLearningRate,
            multiIntent: m.multiIntent.flatMap { b in
                let a = MultiIntentAugmentation(augmentShare: b.augmentShare ?? D.multiIntentAugmentShare,
                                                conjunctions: b.conjunctions ?? D.multiIntentConjunctions,
                                                maxIntents: b.maxIntents ?? D.multiIntentMaxIntents)
                return a.augmentShare == 0 ? nil : a
            },
            redistributeQuotas: m.replay.redistribute == true ? true : nil)
        try s.validate(layers: m.adapter.layers)
        if let b = m.multiIntent, let share = b.augmentShare, share == 0 {
            // off, but its other fields must still be valid
            try MultiIntentAugmentation(augmentShare: 1, conjunctions: b.conjunctions ?? D.multiIntentConjunctions,
                                        maxIntents: b.maxIntents ?? D.multiIntentMaxIntents).validate(at: "methods[\(s.name)]")
        }
        return s
    }

    /// Bounds of every resolved value; fields are named by their path in the method block.
    func validate(layers: [Int]? = nil) throws {
        typealias B = ConfigBounds
        let at = "methods[\(name)]"
        try SafeName.check(name, field: "\(at).name")
        try Bounds.check(epochs, B.epochs, "\(at).training.epochs")
        try Bounds.check(real: learningRate, B.learningRate, lowerOpen: true, "\(at).training.learningRate")
        try Bounds.check(batchSize, B.batchSize, "\(at).training.batchSize")
        try Bounds.check(real: replayShare, 0...1, upperOpen: true, "\(at).replay.share")
        try Bounds.check(spec.bottleneck, B.bottleneck, "\(at).adapter.bottleneck")
        if let layers {
            guard !layers.isEmpty else { throw ConfigError.invalid(field: "\(at).adapter.layers", reason: "must list at least one layer") }
            guard Set(layers).count == layers.count else {
                throw ConfigError.invalid(field: "\(at).adapter.layers", reason: "lists a layer twice: \(layers)")
            }
            for l in layers { try Bounds.check(l, B.layerIndex, "\(at).adapter.layers") }
        }
        try Bounds.check(real: gateMaskFraction, 0...1, lowerOpen: true, "\(at).adapter.gateMaskFraction")
        try Bounds.check(real: protectOldChannels, 0...1, "\(at).adapter.protectOldChannels")
        try Bounds.check(real: sharedLRScale, 0...1, "\(at).adapter.sharedLearningRateScale")
        try Bounds.check(realignHeadSteps, B.realignSteps, "\(at).heads.realignSteps")
        try Bounds.check(real: realignLearningRate, B.learningRate, lowerOpen: true, "\(at).heads.realignLearningRate")
        if let n = driftRefitSteps { try Bounds.check(n, B.driftRefitSteps, "\(at).heads.driftRefitSteps") }
        if let lr = driftRefitLearningRate { try Bounds.check(real: lr, B.learningRate, lowerOpen: true, "\(at).heads.driftRefitLearningRate") }
        try Bounds.check(spec.routerLayer, B.layerIndex, "\(at).router.layer")
        if let p = spec.routerPrototypes {
            try Bounds.check(real: p.temperature, B.prototypeTemperature, lowerOpen: true, "\(at).router.prototypes.temperature")
            try Bounds.check(real: p.weight, B.prototypeWeight, "\(at).router.prototypes.weight")
        }
        try Bounds.check(routerRescoreTopK, B.rescoreTopK, "\(at).router.rescore.topK")
        try Bounds.check(real: routerRescoreThreshold, 0...1, "\(at).router.rescore.threshold")
        try Bounds.check(spec.loraRank, B.loraRank, "\(at).lora.rank")
        try Bounds.check(real: spec.loraAlpha, B.loraAlpha, lowerOpen: true, "\(at).lora.alpha")
        try Bounds.check(real: loss.logitReplay, B.lossWeight, "\(at).loss.logitReplay")
        try Bounds.check(real: loss.anchor, B.lossWeight, "\(at).loss.anchor")
        try Bounds.check(real: loss.orthogonality, B.lossWeight, "\(at).loss.orthogonality")
        try Bounds.check(real: domainFraction, 0...1, "\(at).replay.domainFraction")
        try Bounds.check(real: floorWeight, 0...1, "\(at).replay.floorWeight")
        try Bounds.check(real: samplingFloorWeight, 0...1, "\(at).replay.samplingFloorWeight")
        try Bounds.check(real: forgettingEMA, 0...1, "\(at).replay.forgettingEMA")
        try multiIntent?.validate(at: at)
    }
}

extension MultiIntentAugmentation {
    /// Bounds, with fields named `<at>.multiIntent.<field>`.
    func validate(at: String) throws {
        typealias B = ConfigBounds
        try Bounds.check(real: augmentShare, B.multiIntentAugmentShare, "\(at).multiIntent.augmentShare")
        try Bounds.check(maxIntents, B.multiIntentMaxIntents, "\(at).multiIntent.maxIntents")
        guard !conjunctions.isEmpty else {
            throw ConfigError.invalid(field: "\(at).multiIntent.conjunctions", reason: "must list at least one conjunction")
        }
        for (i, c) in conjunctions.enumerated() {
            let t = c.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !t.isEmpty, t == c, c.utf8.count <= B.multiIntentConjunctionBytes,
                  !c.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw ConfigError.invalid(field: "\(at).multiIntent.conjunctions[\(i)]",
                                          reason: "must be a non-empty phrase of at most \(B.multiIntentConjunctionBytes) bytes without leading or trailing spaces or control characters, got \"\(c)\"")
            }
        }
    }
}

// MARK: - Memory

extension MethodSettings {
    /// What one part of a method's training state costs, and the config field that sizes it.
    public struct MemoryPart: Equatable, Sendable {
        public var field: String
        public var bytes: Int
    }

    /// Bytes of the parameter store (values, gradients and both Adam moments: 16 B per parameter)
    /// for a model of `hidden` width and `layers` layers and a scenario of `domains` domains with
    /// `intents` intents in all, by the part that sizes it. `baseParameters`: the encoder's
    /// weights, trained by full fine-tuning only. Saturates instead of overflowing.
    public func estimatedTrainingBytes(hidden C: Int, layers L: Int, intents: Int, domains K: Int,
                                       baseParameters: Int = 0) -> [MemoryPart] {
        func mul(_ xs: Int...) -> Int {
            xs.reduce(1) { a, b in let (r, o) = a.multipliedReportingOverflow(by: Swift.max(0, b)); return o ? .max : r }
        }
        func add(_ xs: Int...) -> Int { xs.reduce(0) { a, b in let (r, o) = a.addingReportingOverflow(b); return o ? .max : r } }
        var parts: [MemoryPart] = []
        let at = "methods[\(name)]"
        if spec.fullFineTune { parts.append(MemoryPart(field: "\(at).kind", bytes: mul(16, baseParameters))) }
        if spec.adapter {
            let R = spec.bottleneck, slots = spec.adapterLayers?.count ?? L
            // down (R,C)+R, up (C,R)+C, one gate row of R per domain, per adapter layer
            parts.append(MemoryPart(field: "\(at).adapter.bottleneck", bytes: mul(16, slots, add(mul(2, R, C), R, C, mul(K, R)))))
        }
        if spec.lora {
            let sets = spec.loraPerDomain ? K : 1
            // A (r,C) and B (C,r) on query and value of every layer
            parts.append(MemoryPart(field: "\(at).lora.rank", bytes: mul(16, sets, L, 2, 2, spec.loraRank, C)))
        }
        // heads (n,C)+n over every intent; the router's MLP and, with prototypes, one row per intent
        parts.append(MemoryPart(field: "data (intents)", bytes: mul(16, intents, C + 1)))
        let Hd = spec.routerHidden
        parts.append(MemoryPart(field: "\(at).router", bytes: add(mul(16, add(mul(Hd, C), Hd, mul(K, Hd), K)),
                                                                 spec.routerPrototypes == nil ? 0 : mul(16, intents, C))))
        return parts
    }
}
