import Foundation

/// The methods compared on one engine under one byte budget.
public enum MethodKind: String, Codable, CaseIterable, Sendable {
    case fullFT = "full-ft"          // sequential fine-tune of every weight, no replay
    case lora                        // one shared LoRA, no replay
    case loraReplay = "lora-replay"  // LoRA + one reservoir buffer
    case olora                       // a new LoRA per domain, earlier ones frozen, orthogonality loss
    case der                         // LoRA + reservoir storing logits (logit replay)
    case dualReplay = "dual-replay"  // gated adapter + dual-stream buffer + router
    case joint                       // all domains at once (upper bound)
    case single                      // each domain alone (for FWT)

    var usesReplay: Bool { [.loraReplay, .der, .dualReplay].contains(self) }
}

public enum GateInit: String, Codable, CaseIterable, Sendable {
    /// Every entry 1: every domain starts from the full shared bottleneck.
    case ones
    /// A random subset (`gateMaskFraction`) of the bottleneck's channels at 1, the rest at 0:
    /// domains start on partly disjoint channels, so their updates interfere less.
    case mask
}

/// Prototype routing of a method (`PrototypeRouting.Mode`, or off).
public enum RouterPrototypes: String, Codable, CaseIterable, Sendable {
    case off, only, fused
    public var mode: PrototypeRouting.Mode? {
        switch self { case .off: nil; case .only: .only; case .fused: .fused }
    }
}

/// What a reference method (joint, single) trains.
public enum ReferenceArchitecture: String, Codable, CaseIterable, Sendable { case adapter, lora }

/// Softmax scope of the classification loss: the example's own domain's intents (task-incremental,
/// for methods whose router picks the domain) or every intent seen so far (class-incremental).
public enum LossScope: String, Codable, CaseIterable, Sendable { case domain, seen }

/// One method of an experiment, as nested blocks. Every field but `kind` is optional: what is
/// absent takes its default from `ConfigDefaults` (per kind where it says so), or the
/// experiment's `training` block.
public struct MethodConfig: Codable, Equatable, Sendable {
    public var kind: MethodKind
    /// Label in tables and file names (default: the kind's name).
    public var name: String?
    public var training = Training()
    public var adapter = Adapter()
    public var heads = Heads()
    public var router = Router()
    public var lora = LoRA()
    public var loss = Loss()
    public var replay = Replay()
    /// Multi-intent augmentation (absent = off).
    public var multiIntent: MultiIntent?
    /// Reference methods (joint, single) only.
    public var architecture: ReferenceArchitecture?

    public init(kind: MethodKind, name: String? = nil) {
        self.kind = kind
        self.name = name
    }

    /// Overrides of the experiment's `training` block.
    public struct Training: Codable, Equatable, Sendable {
        public var epochs: Int?
        public var learningRate: Float?
        public var batchSize: Int?
        public init() {}
    }

    /// The gated adapter (dual-replay, and joint/single with the adapter architecture).
    public struct Adapter: Codable, Equatable, Sendable {
        public var bottleneck: Int?
        /// Layers with an adapter (nil = every layer).
        public var layers: [Int]?
        public var placement: AdapterPlacement?
        public var activation: AdapterActivation?
        public var gateInit: GateInit?
        public var gateMaskFraction: Float?
        /// Earlier domains' gate rows stop training when their domain ends.
        public var freezeOldGates: Bool?
        /// Scales the gradient of shared bottleneck channels by (1 − protect · max_old |gate|):
        /// 1 = channels used by earlier domains are frozen (HAT-like), 0 = off.
        public var protectOldChannels: Float?
        /// Learning-rate multiplier of the shared adapter (down and up projections) from the
        /// second domain on; gates and heads keep the full rate. 1 = off, 0 = frozen.
        public var sharedLearningRateScale: Float?
        public init() {}
    }

    /// The per-domain classification heads.
    public struct Heads: Codable, Equatable, Sendable {
        /// Earlier domains' heads stop training when their domain ends (else replay trains them).
        public var freezeOld: Bool?
        /// After each domain, refit every earlier domain's head on its buffered examples under
        /// its own gate for this many Adam steps (full batch; encoder and adapter untouched). 0 = off.
        public var realignSteps: Int?
        /// Adam learning rate of head realignment (absent = the method's learning rate).
        public var realignLearningRate: Float?
        /// The alignment-drift remedy: after each domain, every earlier domain that the linear-probe
        /// check classes as alignment drift gets a fresh gate row and head trained for this many
        /// Adam steps on its buffered examples (shared adapter frozen), kept only if its
        /// validation F1 improves. 0 = off.
        public var driftRefitSteps: Int?
        /// Adam learning rate of the drift refit (absent = the method's learning rate).
        public var driftRefitLearningRate: Float?
        public init() {}
    }

    /// The domain router at inference, and how it scores domains.
    public struct Router: Codable, Equatable, Sendable {
        /// Route with the domain router (default: per kind, `ConfigDefaults.routerEnabled`).
        public var enabled: Bool?
        /// The layer whose frozen hidden state the router reads (absent = the last layer).
        public var layer: Int?
        /// Router trained with 1/count weights per domain (balanced); false = naive.
        public var balanced: Bool?
        public var prototypes = Prototypes()
        public var rescore = Rescore()
        public init() {}

        /// Every seen intent keeps the mean router feature of its training utterances, and
        /// domains are scored by cosine similarity to them; "fused" multiplies the MLP's
        /// probabilities by p_proto^weight.
        public struct Prototypes: Codable, Equatable, Sendable {
            public var mode: RouterPrototypes?
            public var temperature: Float?
            public var weight: Float?
            public init() {}
        }

        /// A sequence whose top router probability is below `threshold` is also scored by its
        /// next domains' gated passes, up to `topK` candidates in all (1 = off).
        public struct Rescore: Codable, Equatable, Sendable {
            public var topK: Int?
            public var threshold: Float?
            public init() {}
        }
    }

    /// LoRA on query and value (the baselines).
    public struct LoRA: Codable, Equatable, Sendable {
        public var rank: Int?
        public var alpha: Float?
        public init() {}
    }

    public struct Loss: Codable, Equatable, Sendable {
        /// Default: domain with a router, seen without.
        public var scope: LossScope?
        /// Weight of logit replay: DER, and dual-replay's domain-stream distillation (its buffer
        /// then stores logits, inside the same byte budget).
        public var logitReplay: Float?
        /// Weight of the general stream's anchoring loss.
        public var anchor: Float?
        public var orthogonality: Float?
        public init() {}
    }

    /// The remedy for multi-intent fragility: each domain also trains on utterances synthesized
    /// from its own single-intent training utterances of different intents, joined with a
    /// conjunction, with every joined intent as a target (soft-target cross-entropy over the gold
    /// set). Present = on; absent fields take `ConfigDefaults.multiIntent*`; `augmentShare` 0 = off.
    public struct MultiIntent: Codable, Equatable, Sendable {
        /// Synthesized utterances per single-intent training utterance.
        public var augmentShare: Double?
        public var conjunctions: [String]?
        /// Intents per synthesized utterance, 2...maxIntents.
        public var maxIntents: Int?
        public init() {}
    }

    /// Replay: the share of each batch, and the dual-stream buffer's policy.
    public struct Replay: Codable, Equatable, Sendable {
        /// Share of each batch drawn from replay (methods with a buffer; overrides `training.replayShare`).
        public var share: Double?
        public var domainFraction: Double?
        public var floorWeight: Double?
        public var samplingFloorWeight: Double?
        public var forgettingEMA: Double?
        /// Dual-Replay: cap each domain's quota at what it can hold and give the rest to the
        /// others (`DualStreamConfig.redistributeUnused`; default off).
        public var redistribute: Bool?
        public init() {}
    }
}

// MARK: - Strict decoding

extension MethodConfig {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case kind, name, training, adapter, heads, router, lora, loss, replay, multiIntent, architecture
    }

    public init(from decoder: Decoder) throws {
        let loose = try decoder.container(keyedBy: CodingKeys.self)
        let label = (try? loose.decodeIfPresent(String.self, forKey: .name)) ?? (try? loose.decodeIfPresent(String.self, forKey: .kind))
        // schema 1 had `"router": true`; now the router is a block
        if let on = try? loose.decodeIfPresent(Bool.self, forKey: .router) {
            let at = ConfigPath.render(decoder.codingPath) + (label.map { " (\($0))" } ?? "")
            throw ConfigError.movedField(at: at, field: "router", to: "router.enabled=\(on)")
        }
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self, moved: MovedFields.methodMoves, label: label)
        guard let kind = try c.decodeChoice(MethodKind.self, forKey: .kind) else {
            throw DecodingError.keyNotFound(CodingKeys.kind, .init(codingPath: decoder.codingPath, debugDescription: "missing"))
        }
        self.init(kind: kind, name: try c.decodeIfPresent(String.self, forKey: .name))
        training = try c.decodeIfPresent(Training.self, forKey: .training) ?? Training()
        adapter = try c.decodeIfPresent(Adapter.self, forKey: .adapter) ?? Adapter()
        heads = try c.decodeIfPresent(Heads.self, forKey: .heads) ?? Heads()
        router = try c.decodeIfPresent(Router.self, forKey: .router) ?? Router()
        lora = try c.decodeIfPresent(LoRA.self, forKey: .lora) ?? LoRA()
        loss = try c.decodeIfPresent(Loss.self, forKey: .loss) ?? Loss()
        replay = try c.decodeIfPresent(Replay.self, forKey: .replay) ?? Replay()
        multiIntent = try c.decodeIfPresent(MultiIntent.self, forKey: .multiIntent)
        architecture = try c.decodeChoice(ReferenceArchitecture.self, forKey: .architecture)
    }

    /// Empty blocks are left out, so an encoded method reads like the file it came from.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(kind, forKey: .kind)
        try c.encodeIfPresent(name, forKey: .name)
        if training != Training() { try c.encode(training, forKey: .training) }
        if adapter != Adapter() { try c.encode(adapter, forKey: .adapter) }
        if heads != Heads() { try c.encode(heads, forKey: .heads) }
        if router != Router() { try c.encode(router, forKey: .router) }
        if lora != LoRA() { try c.encode(lora, forKey: .lora) }
        if loss != Loss() { try c.encode(loss, forKey: .loss) }
        if replay != Replay() { try c.encode(replay, forKey: .replay) }
        try c.encodeIfPresent(multiIntent, forKey: .multiIntent)
        try c.encodeIfPresent(architecture, forKey: .architecture)
    }
}

extension MethodConfig.Training {
    enum CodingKeys: String, CodingKey, CaseIterable { case epochs, learningRate, batchSize }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        epochs = try c.decodeIfPresent(Int.self, forKey: .epochs)
        learningRate = try c.decodeIfPresent(Float.self, forKey: .learningRate)
        batchSize = try c.decodeIfPresent(Int.self, forKey: .batchSize)
    }
}

extension MethodConfig.Adapter {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case bottleneck, layers, placement, activation, gateInit, gateMaskFraction, freezeOldGates, protectOldChannels,
             sharedLearningRateScale
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        bottleneck = try c.decodeIfPresent(Int.self, forKey: .bottleneck)
        layers = try c.decodeIfPresent([Int].self, forKey: .layers)
        placement = try c.decodeChoice(AdapterPlacement.self, forKey: .placement)
        activation = try c.decodeChoice(AdapterActivation.self, forKey: .activation)
        gateInit = try c.decodeChoice(GateInit.self, forKey: .gateInit)
        gateMaskFraction = try c.decodeIfPresent(Float.self, forKey: .gateMaskFraction)
        freezeOldGates = try c.decodeIfPresent(Bool.self, forKey: .freezeOldGates)
        protectOldChannels = try c.decodeIfPresent(Float.self, forKey: .protectOldChannels)
        sharedLearningRateScale = try c.decodeIfPresent(Float.self, forKey: .sharedLearningRateScale)
    }
}

extension MethodConfig.Heads {
    enum CodingKeys: String, CodingKey, CaseIterable { case freezeOld, realignSteps, realignLearningRate, driftRefitSteps, driftRefitLearningRate }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        freezeOld = try c.decodeIfPresent(Bool.self, forKey: .freezeOld)
        realignSteps = try c.decodeIfPresent(Int.self, forKey: .realignSteps)
        realignLearningRate = try c.decodeIfPresent(Float.self, forKey: .realignLearningRate)
        driftRefitSteps = try c.decodeIfPresent(Int.self, forKey: .driftRefitSteps)
        driftRefitLearningRate = try c.decodeIfPresent(Float.self, forKey: .driftRefitLearningRate)
    }
}

extension MethodConfig.Router {
    enum CodingKeys: String, CodingKey, CaseIterable { case enabled, layer, balanced, prototypes, rescore }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled)
        layer = try c.decodeIfPresent(Int.self, forKey: .layer)
        balanced = try c.decodeIfPresent(Bool.self, forKey: .balanced)
        prototypes = try c.decodeIfPresent(Prototypes.self, forKey: .prototypes) ?? Prototypes()
        rescore = try c.decodeIfPresent(Rescore.self, forKey: .rescore) ?? Rescore()
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(enabled, forKey: .enabled)
        try c.encodeIfPresent(layer, forKey: .layer)
        try c.encodeIfPresent(balanced, forKey: .balanced)
        if prototypes != Prototypes() { try c.encode(prototypes, forKey: .prototypes) }
        if rescore != Rescore() { try c.encode(rescore, forKey: .rescore) }
    }
}

extension MethodConfig.Router.Prototypes {
    enum CodingKeys: String, CodingKey, CaseIterable { case mode, temperature, weight }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        mode = try c.decodeChoice(RouterPrototypes.self, forKey: .mode)
        temperature = try c.decodeIfPresent(Float.self, forKey: .temperature)
        weight = try c.decodeIfPresent(Float.self, forKey: .weight)
    }
}

extension MethodConfig.Router.Rescore {
    enum CodingKeys: String, CodingKey, CaseIterable { case topK, threshold }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        topK = try c.decodeIfPresent(Int.self, forKey: .topK)
        threshold = try c.decodeIfPresent(Float.self, forKey: .threshold)
    }
}

extension MethodConfig.LoRA {
    enum CodingKeys: String, CodingKey, CaseIterable { case rank, alpha }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        rank = try c.decodeIfPresent(Int.self, forKey: .rank)
        alpha = try c.decodeIfPresent(Float.self, forKey: .alpha)
    }
}

extension MethodConfig.Loss {
    enum CodingKeys: String, CodingKey, CaseIterable { case scope, logitReplay, anchor, orthogonality }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        scope = try c.decodeChoice(LossScope.self, forKey: .scope)
        logitReplay = try c.decodeIfPresent(Float.self, forKey: .logitReplay)
        anchor = try c.decodeIfPresent(Float.self, forKey: .anchor)
        orthogonality = try c.decodeIfPresent(Float.self, forKey: .orthogonality)
    }
}

extension MethodConfig.Replay {
    enum CodingKeys: String, CodingKey, CaseIterable { case share, domainFraction, floorWeight, samplingFloorWeight, forgettingEMA, redistribute }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        share = try c.decodeIfPresent(Double.self, forKey: .share)
        domainFraction = try c.decodeIfPresent(Double.self, forKey: .domainFraction)
        floorWeight = try c.decodeIfPresent(Double.self, forKey: .floorWeight)
        samplingFloorWeight = try c.decodeIfPresent(Double.self, forKey: .samplingFloorWeight)
        forgettingEMA = try c.decodeIfPresent(Double.self, forKey: .forgettingEMA)
        redistribute = try c.decodeIfPresent(Bool.self, forKey: .redistribute)
    }
}

extension MethodConfig.MultiIntent {
    enum CodingKeys: String, CodingKey, CaseIterable { case augmentShare, conjunctions, maxIntents }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        augmentShare = try c.decodeIfPresent(Double.self, forKey: .augmentShare)
        conjunctions = try c.decodeIfPresent([String].self, forKey: .conjunctions)
        maxIntents = try c.decodeIfPresent(Int.self, forKey: .maxIntents)
    }
}

// MARK: - The flat format (schema 1)

/// Where each field of the flat (schema 1) method format lives now; `name`, `kind` and
/// `architecture` stayed where they were.
public enum MovedFields {
    public static let table: [(old: String, new: String)] = [
        ("name", "name"), ("kind", "kind"), ("architecture", "architecture"),
        ("epochs", "training.epochs"), ("learningRate", "training.learningRate"), ("batchSize", "training.batchSize"),
        ("replayShare", "replay.share"), ("router", "router.enabled"),
        ("bottleneck", "adapter.bottleneck"), ("adapterLayers", "adapter.layers"), ("placement", "adapter.placement"),
        ("activation", "adapter.activation"), ("gateInit", "adapter.gateInit"), ("gateMaskFraction", "adapter.gateMaskFraction"),
        ("freezeOldGates", "adapter.freezeOldGates"), ("protectOldChannels", "adapter.protectOldChannels"),
        ("sharedLearningRateScale", "adapter.sharedLearningRateScale"),
        ("freezeOldHeads", "heads.freezeOld"), ("realignHeadSteps", "heads.realignSteps"),
        ("realignLearningRate", "heads.realignLearningRate"),
        ("routerLayer", "router.layer"), ("routerBalanced", "router.balanced"), ("routerPrototypes", "router.prototypes.mode"),
        ("routerPrototypeTemperature", "router.prototypes.temperature"), ("routerPrototypeWeight", "router.prototypes.weight"),
        ("routerRescoreTopK", "router.rescore.topK"), ("routerRescoreThreshold", "router.rescore.threshold"),
        ("loraRank", "lora.rank"), ("loraAlpha", "lora.alpha"),
        ("lossScope", "loss.scope"), ("logitReplayWeight", "loss.logitReplay"), ("anchorWeight", "loss.anchor"),
        ("orthogonalityWeight", "loss.orthogonality"),
        ("domainFraction", "replay.domainFraction"), ("floorWeight", "replay.floorWeight"),
        ("samplingFloorWeight", "replay.samplingFloorWeight"), ("forgettingEMA", "replay.forgettingEMA"),
    ]

    /// Old name → new path, for the fields that moved.
    static let methodMoves: [String: String] = Dictionary(uniqueKeysWithValues: table.filter { $0.old != $0.new })

    /// `adapter.bottleneck` → `"adapter": {"bottleneck": ...}`; `router.enabled=true` → `... {"enabled": true}`.
    static func usage(_ path: String) -> String {
        let parts = path.split(separator: "=", maxSplits: 1)
        let value = parts.count == 2 ? String(parts[1]) : "..."
        let keys = parts[0].split(separator: ".")
        return keys.reversed().reduce(value) { inner, key in "{\"\(key)\": \(inner)}" }.dropFirst().dropLast()
            .trimmingCharacters(in: .whitespaces)
    }
}
