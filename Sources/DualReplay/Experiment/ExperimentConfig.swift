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

public enum GateInit: String, Codable, Sendable {
    /// Every entry 1: every domain starts from the full shared bottleneck.
    case ones
    /// A random subset (`gateMaskFraction`) of the bottleneck's channels at 1, the rest at 0:
    /// domains start on partly disjoint channels, so their updates interfere less.
    case mask
}

/// One method of an experiment. Every field is optional: what is absent takes the method's
/// default (`MethodSettings.defaults(for:)`), then the experiment's `training` block.
public struct MethodConfig: Codable, Equatable, Sendable {
    /// Label in tables (default: the kind's name).
    public var name: String?
    public var kind: MethodKind
    public var epochs: Int?
    public var learningRate: Float?
    public var batchSize: Int?
    /// Share of each batch drawn from replay (methods with a buffer).
    public var replayShare: Double?
    /// Use the domain router at inference (default: on for dual-replay, off otherwise).
    public var router: Bool?
    // adapter (dual-replay, and joint/single references)
    public var bottleneck: Int?
    public var adapterLayers: [Int]?
    public var placement: AdapterPlacement?
    public var activation: AdapterActivation?
    public var gateInit: GateInit?
    public var gateMaskFraction: Float?
    /// Earlier domains' gate rows stop training when their domain ends.
    public var freezeOldGates: Bool?
    /// Earlier domains' heads stop training when their domain ends (else replay trains them).
    public var freezeOldHeads: Bool?
    /// Scales the gradient of shared bottleneck channels by (1 − protect · max_old |gate|):
    /// 1 = channels used by earlier domains are frozen (HAT-like), 0 = off.
    public var protectOldChannels: Float?
    /// Learning-rate multiplier of the shared adapter (down and up projections) from the second
    /// domain on; gates and heads keep the full rate. 1 = off, 0 = frozen after the first domain.
    public var sharedLearningRateScale: Float?
    /// Head rescoring at inference: a sequence whose top router probability is below
    /// `routerRescoreThreshold` (default 0.9) is also scored by its next domains' gated passes,
    /// up to `routerRescoreTopK` candidates in all (default 1 = off).
    public var routerRescoreTopK: Int?
    public var routerRescoreThreshold: Float?
    /// After each domain, refit every earlier domain's head on its buffered examples under its own
    /// gate for this many Adam steps (full batch; encoder and adapter untouched): realigns heads
    /// whose features drifted (the probe's "alignment drift"). 0 = off.
    public var realignHeadSteps: Int?
    /// Adam learning rate of head realignment (nil = the method's learning rate).
    public var realignLearningRate: Float?
    /// Router reads this layer's frozen hidden state (nil = the last layer).
    public var routerLayer: Int?
    /// Prototype routing: "off", "only" or "fused" (default where the router is on; see
    /// `PrototypeRouting`): every seen
    /// intent keeps the mean router feature of its training utterances, and domains are scored
    /// by cosine similarity to them; "fused" multiplies the MLP's probabilities by
    /// p_proto^`routerPrototypeWeight`.
    public var routerPrototypes: String?
    public var routerPrototypeTemperature: Float?
    public var routerPrototypeWeight: Float?
    // LoRA (baselines)
    public var loraRank: Int?
    public var loraAlpha: Float?
    // losses
    /// Weight of logit replay: DER, and dual-replay's domain-stream distillation (its buffer then
    /// stores logits, inside the same byte budget).
    public var logitReplayWeight: Float?
    /// Weight of the general stream's anchoring loss.
    public var anchorWeight: Float?
    public var orthogonalityWeight: Float?
    // dual-stream buffer
    public var domainFraction: Double?
    public var floorWeight: Double?
    public var samplingFloorWeight: Double?
    public var forgettingEMA: Double?
    /// Router trained with 1/count weights per domain (balanced) — false = naive.
    public var routerBalanced: Bool?
    /// Reference methods (joint, single): which architecture ("adapter" or "lora").
    public var architecture: String?
    /// Softmax scope of the classification loss: "domain" (the example's own domain's intents:
    /// task-incremental, for methods whose router picks the domain) or "seen" (every intent seen
    /// so far: class-incremental, what an argmax over all intents needs). Default: "domain" with a
    /// router, "seen" without.
    public var lossScope: String?

    public init(kind: MethodKind) { self.kind = kind }
}

/// A method with every field resolved.
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
    /// Shared adapter learning-rate multiplier after the first domain (nil = 1).
    public var sharedLRScale: Float?
    /// Head realignment steps after each domain (nil = off).
    public var realignHeadSteps: Int?
    public var realignLearningRate: Float?
    /// Router head rescoring (nil = off / 0.9).
    public var routerRescoreTopK: Int?
    public var routerRescoreThreshold: Float?

    public static func resolve(_ m: MethodConfig, training t: TrainingDefaults) throws -> MethodSettings {
        let arch = m.architecture ?? "adapter"
        guard ["adapter", "lora"].contains(arch) else {
            throw ConfigError.invalid(field: "methods[\(m.kind.rawValue)].architecture", reason: "must be \"adapter\" or \"lora\", got \"\(arch)\"")
        }
        var spec = ModelSpec()
        switch m.kind {
        case .fullFT: spec.fullFineTune = true
        case .lora, .loraReplay, .der: spec.lora = true
        case .olora: spec.lora = true; spec.loraPerDomain = true
        case .dualReplay: spec.adapter = true
        case .joint, .single: if arch == "adapter" { spec.adapter = true } else { spec.lora = true }
        }
        spec.bottleneck = m.bottleneck ?? 64
        spec.adapterLayers = m.adapterLayers
        spec.placement = m.placement ?? .output
        spec.activation = m.activation ?? .gelu
        spec.loraRank = m.loraRank ?? 8
        spec.loraAlpha = m.loraAlpha ?? 16
        spec.routerLayer = m.routerLayer
        // prototype routing is on ("fused") wherever the router is, unless the config says otherwise
        let routed = m.router ?? (m.kind == .dualReplay)
        switch m.routerPrototypes ?? (routed ? "fused" : "off") {
        case "off": break
        case let mode:
            guard let md = PrototypeRouting.Mode(rawValue: mode) else {
                throw ConfigError.invalid(field: "methods[\(m.name ?? m.kind.rawValue)].routerPrototypes",
                                          reason: "must be \"off\", \"only\" or \"fused\", got \"\(mode)\"")
            }
            spec.routerPrototypes = PrototypeRouting(mode: md, temperature: m.routerPrototypeTemperature ?? 0.02,
                                                     weight: m.routerPrototypeWeight ?? 2)
        }
        var loss = LossWeights()
        // DER's logit replay; for dual-replay, distillation on its domain stream (chosen on validation)
        loss.logitReplay = m.logitReplayWeight ?? (m.kind == .der || m.kind == .dualReplay ? 0.5 : 0)
        loss.anchor = m.anchorWeight ?? (m.kind == .dualReplay ? 0.1 : 0)
        loss.orthogonality = m.orthogonalityWeight ?? (m.kind == .olora ? 0.1 : 0)
        var s = MethodSettings(
            name: m.name ?? m.kind.rawValue, kind: m.kind,
            epochs: m.epochs ?? t.epochs, learningRate: m.learningRate ?? t.learningRate,
            batchSize: m.batchSize ?? t.batchSize,
            replayShare: m.kind.usesReplay ? (m.replayShare ?? t.replayShare) : 0,
            router: m.router ?? (m.kind == .dualReplay),
            spec: spec, gateInit: m.gateInit ?? .ones, gateMaskFraction: m.gateMaskFraction ?? 0.5,
            freezeOldGates: m.freezeOldGates ?? true, freezeOldHeads: m.freezeOldHeads ?? false,
            protectOldChannels: m.protectOldChannels ?? 0, loss: loss,
            domainFraction: m.domainFraction ?? 0.7, floorWeight: m.floorWeight ?? 0.2,
            samplingFloorWeight: m.samplingFloorWeight ?? 0.2, forgettingEMA: m.forgettingEMA ?? 0.5,
            routerBalanced: m.routerBalanced ?? true,
            lossOverSeen: (m.lossScope ?? ((m.router ?? (m.kind == .dualReplay)) ? "domain" : "seen")) == "seen")
        s.sharedLRScale = m.sharedLearningRateScale
        s.routerRescoreTopK = m.routerRescoreTopK
        s.realignHeadSteps = m.realignHeadSteps
        s.realignLearningRate = m.realignLearningRate
        s.routerRescoreThreshold = m.routerRescoreThreshold
        if let scope = m.lossScope, scope != "domain" && scope != "seen" {
            throw ConfigError.invalid(field: "methods[\(s.name)].lossScope", reason: "must be \"domain\" or \"seen\", got \"\(scope)\"")
        }
        try s.validate()
        return s
    }

    func validate() throws {
        func check(_ ok: Bool, _ field: String, _ reason: String) throws {
            if !ok { throw ConfigError.invalid(field: "methods[\(name)].\(field)", reason: reason) }
        }
        try check(epochs >= 1, "epochs", "must be >= 1, got \(epochs)")
        try check(learningRate > 0 && learningRate.isFinite, "learningRate", "must be > 0, got \(learningRate)")
        try check(batchSize >= 2, "batchSize", "must be >= 2, got \(batchSize)")
        try check(replayShare >= 0 && replayShare < 1, "replayShare", "must be in [0, 1), got \(replayShare)")
        try check(spec.bottleneck >= 1, "bottleneck", "must be >= 1")
        try check(spec.loraRank >= 1, "loraRank", "must be >= 1")
        try check(gateMaskFraction > 0 && gateMaskFraction <= 1, "gateMaskFraction", "must be in (0, 1]")
        try check(protectOldChannels >= 0 && protectOldChannels <= 1, "protectOldChannels", "must be in [0, 1]")
        try check((0...1).contains(sharedLRScale ?? 1), "sharedLearningRateScale", "must be in [0, 1]")
        try check((routerRescoreTopK ?? 1) >= 1, "routerRescoreTopK", "must be >= 1")
        try check((realignHeadSteps ?? 0) >= 0, "realignHeadSteps", "must be >= 0")
        try check((realignLearningRate ?? 1) > 0 && (realignLearningRate ?? 1).isFinite, "realignLearningRate", "must be > 0")
        try check((0...1).contains(routerRescoreThreshold ?? 0.9), "routerRescoreThreshold", "must be in [0, 1]")
        try check(domainFraction >= 0 && domainFraction <= 1, "domainFraction", "must be in [0, 1]")
        if let p = spec.routerPrototypes {
            try check(p.temperature > 0 && p.temperature.isFinite, "routerPrototypeTemperature", "must be > 0, got \(p.temperature)")
            try check(p.weight >= 0 && p.weight.isFinite, "routerPrototypeWeight", "must be >= 0, got \(p.weight)")
        }
        try check(loss.logitReplay >= 0 && loss.anchor >= 0 && loss.orthogonality >= 0, "loss weights", "must be >= 0")
    }
}

/// Training settings shared by every method unless a method overrides them.
public struct TrainingDefaults: Codable, Equatable, Sendable {
    public var epochs: Int = 3
    public var learningRate: Float = 1e-3
    public var batchSize: Int = 32
    public var replayShare: Double = 0.2
    /// Replay budget in bytes; nil = `bufferExamples` times the mean stored size of a training
    /// example of the scenario (the same bytes for every method).
    public var bufferBytes: Int?
    public var bufferExamples: Int = 1000
    /// Tokens per utterance, [CLS]/[SEP] included (intent utterances are short).
    public var maxLength: Int = 64
    public var optimizer: OptimizerConfig = OptimizerConfig()
    public var routerTraining: RouterConfig = RouterConfig()
    public init() {}
}

extension TrainingDefaults {
    enum CodingKeys: String, CodingKey {
        case epochs, learningRate, batchSize, replayShare, bufferBytes, bufferExamples, maxLength, optimizer, routerTraining
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
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
    }
}

/// One JSONL file of the scenario.
public struct DataFileConfig: Codable, Equatable, Sendable {
    /// Path of the JSONL file (relative paths are resolved against `data.directory`).
    public var path: String
    /// Prefix for domain names ("nlupp" -> "nlupp/banking"), so equal names from two sets coexist.
    public var domainPrefix: String?
    /// Keep only these domains (after the prefix), in this order; nil = all.
    public var domains: [String]?
    public var excludeDomains: [String]?
    /// "drop" (default) | "keep" (first label) | "separate" (multi-intent test rows).
    public var multiLabel: String?
    public var allowSharedLabels: Bool?
    /// "reject" (default) | "drop": a val/test label never seen in training.
    public var unknownLabels: String?

    public init(path: String, domainPrefix: String? = nil, domains: [String]? = nil) {
        self.path = path
        self.domainPrefix = domainPrefix
        self.domains = domains
    }
}

public struct DataConfig: Codable, Equatable, Sendable {
    /// Directory the relative file paths are resolved against (default: $DR_DATA or ../shared/data).
    public var directory: String?
    public var files: [DataFileConfig]?
    /// The built-in synthetic corpus (used when `files` is absent).
    public var synthetic: SyntheticConfig?
    /// General-text JSONL for Dual-Replay's general stream (default: general/general.jsonl under
    /// the directory when present; the synthetic generator's general text otherwise).
    public var general: String?
    /// Multi-intent test files (MixATIS/MixSNIPS format, `intents` lists): their test rows with
    /// several intents become multi-intent test rows of the domain they name (after `domainPrefix`),
    /// for the fragility diagnostic. `unknownLabels: "drop"` skips rows with an intent the domain
    /// does not train on; the default rejects them.
    public var multiIntentFiles: [DataFileConfig]?
    /// Subsample every domain's train/val/test to at most this many examples (quick runs).
    public var maxTrainPerDomain: Int?
    public var maxEvalPerDomain: Int?

    public init(directory: String? = nil, files: [DataFileConfig]? = nil, synthetic: SyntheticConfig? = nil, general: String? = nil,
                maxTrainPerDomain: Int? = nil, maxEvalPerDomain: Int? = nil) {
        self.directory = directory
        self.files = files
        self.synthetic = synthetic
        self.general = general
        self.maxTrainPerDomain = maxTrainPerDomain
        self.maxEvalPerDomain = maxEvalPerDomain
    }
}

/// A whole experiment: data, methods, orderings. JSON or YAML.
public struct ExperimentConfig: Codable, Equatable, Sendable {
    public static let schemaVersion = 1
    public var schemaVersion: Int?
    public var name: String
    public var model: String?
    public var data: DataConfig
    public var methods: [MethodConfig]
    /// Reference runs: "joint" and/or "single" (needed for intransigence and FWT).
    public var references: [MethodConfig]?
    /// Number of domain orderings (seeds 1..N; seed 0 = file order when `includeFileOrder`).
    public var orderings: Int?
    public var orderingSeeds: [UInt64]?
    public var seed: UInt64?
    public var threads: Int?
    /// "test" (reported results) or "val" (hyperparameter selection: never look at test).
    public var evalSplit: String?
    public var training: TrainingDefaults?
    /// Single-utterance latency samples (routed prediction, 1 thread) per method; 0 = skip.
    public var latencySamples: Int?
    /// Failure-mode diagnostics of every sequential run (docs/METRICS.md): the linear probe that
    /// tells alignment drift from knowledge loss, and multi-intent fragility on the domains'
    /// multi-intent test rows. Off by default (the probe costs two extra passes over the data).
    public var diagnostics: Bool?
    /// Training rows per domain the probe is fitted on (default 600).
    public var probeTrainPerDomain: Int?

    public init(name: String, model: String? = nil, data: DataConfig, methods: [MethodConfig]) {
        self.name = name
        self.model = model
        self.data = data
        self.methods = methods
    }

    public var resolvedOrderingSeeds: [UInt64] {
        if let s = orderingSeeds, !s.isEmpty { return s }
        return (0..<UInt64(max(1, orderings ?? 5))).map { $0 }
    }

    public func validate() throws {
        if let v = schemaVersion, v != Self.schemaVersion {
            throw ConfigError.invalid(field: "schemaVersion", reason: "this build reads version \(Self.schemaVersion), the file says \(v)")
        }
        guard !methods.isEmpty else { throw ConfigError.invalid(field: "methods", reason: "at least one method is required") }
        if let s = evalSplit, s != "test" && s != "val" {
            throw ConfigError.invalid(field: "evalSplit", reason: "must be \"test\" or \"val\", got \"\(s)\"")
        }
        if let o = orderings, o < 1 { throw ConfigError.invalid(field: "orderings", reason: "must be >= 1") }
        if let t = threads, t < 1 { throw ConfigError.invalid(field: "threads", reason: "must be >= 1") }
        if let p = probeTrainPerDomain, p < 2 { throw ConfigError.invalid(field: "probeTrainPerDomain", reason: "must be >= 2") }
        if data.files == nil && data.synthetic == nil {
            throw ConfigError.invalid(field: "data", reason: "give `files` (JSONL) or `synthetic`")
        }
        var names = Set<String>()
        for m in methods + (references ?? []) {
            let s = try MethodSettings.resolve(m, training: training ?? TrainingDefaults())
            guard names.insert(s.name).inserted else {
                throw ConfigError.invalid(field: "methods", reason: "two methods are named \"\(s.name)\": give one a `name`")
            }
        }
        for r in references ?? [] where r.kind != .joint && r.kind != .single {
            throw ConfigError.invalid(field: "references", reason: "only joint and single are references, got \(r.kind.rawValue)")
        }
    }

    /// Reads JSON, or YAML when the file ends in .yaml/.yml. Errors name the file and the field.
    public static func load(_ url: URL) throws -> ExperimentConfig {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw ConfigError.unreadable(path: url.path, reason: error.localizedDescription)
        }
        let ext = url.pathExtension.lowercased()
        do {
            let cfg: ExperimentConfig
            if ext == "yaml" || ext == "yml" {
                cfg = try YAMLConfigDecoder.decode(ExperimentConfig.self, from: data)
            } else {
                cfg = try JSONDecoder().decode(ExperimentConfig.self, from: data)
            }
            try cfg.validate()
            return cfg
        } catch let e as ConfigError {
            throw ConfigError.inFile(path: url.path, e.description)
        } catch let e as DecodingError {
            throw ConfigError.inFile(path: url.path, ConfigError.describe(e))
        } catch {
            throw ConfigError.inFile(path: url.path, "\(error)")
        }
    }
}

public enum ConfigError: LocalizedError, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case invalid(field: String, reason: String)
    case inFile(path: String, String)

    public var description: String {
        switch self {
        case let .unreadable(p, r): return "\(p): cannot read the config: \(r)"
        case let .invalid(f, r): return "field `\(f)`: \(r)"
        case let .inFile(p, s): return "\(p): \(s)"
        }
    }
    public var errorDescription: String? { description }

    static func describe(_ e: DecodingError) -> String {
        func path(_ c: [CodingKey]) -> String {
            c.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingCharacters(in: CharacterSet(charactersIn: "."))
        }
        switch e {
        case let .keyNotFound(k, ctx): return "missing field `\(path(ctx.codingPath + [k]))`"
        case let .typeMismatch(t, ctx): return "field `\(path(ctx.codingPath))`: expected \(t)"
        case let .valueNotFound(t, ctx): return "field `\(path(ctx.codingPath))`: expected \(t), found null"
        case let .dataCorrupted(ctx):
            return ctx.codingPath.isEmpty ? "not valid JSON/YAML: \(ctx.debugDescription)"
                : "field `\(path(ctx.codingPath))`: \(ctx.debugDescription)"
        @unknown default: return "\(e)"
        }
    }
}
