import Foundation

/// Which split an experiment reports: "test" (results) or "val" (hyperparameter selection:
/// test splits are never read).
public enum EvalSplit: String, Codable, CaseIterable, Sendable {
    case test, val
    /// The data split it reads.
    public var split: Split { self == .val ? .val : .test }
}

/// How the ranks of an MPI job share an experiment (docs/CLUSTER.md). It never changes results,
/// so it is not part of the protocol.
public enum ParallelMode: String, Codable, CaseIterable, Sendable {
    /// Every rank trains every run together, each on its share of every batch.
    case data
    /// The (method, ordering, reference) runs are spread over the ranks, whole runs each.
    case grid
}

/// A whole experiment: data, methods, orderings. JSON or YAML; docs/CONFIG.md.
public struct ExperimentConfig: Codable, Equatable, Sendable {
    /// 2: methods as nested blocks (`adapter`, `router`, ...); 1 was the flat method format.
    public static let schemaVersion = 2
    public var schemaVersion: Int?
    /// Names the output directory `results/<name>`: one path component.
    public var name: String
    public var model: String?
    public var data: DataConfig
    public var methods: [MethodConfig]
    /// Reference runs: "joint" and/or "single" (needed for intransigence and FWT).
    public var references: [MethodConfig]?
    /// Number of domain orderings (seeds 0..N-1; seed 0 = file order).
    public var orderings: Int?
    public var orderingSeeds: [UInt64]?
    public var seed: UInt64?
    public var threads: Int?
    public var evalSplit: EvalSplit?
    public var training: TrainingDefaults?
    /// Single-utterance latency samples (routed prediction, 1 thread) per method; 0 = skip.
    public var latencySamples: Int?
    /// Failure-mode diagnostics of every sequential run (docs/METRICS.md): the linear probe that
    /// tells alignment drift from knowledge loss, and multi-intent fragility on the domains'
    /// multi-intent test rows. Off by default (the probe costs two extra passes over the data).
    public var diagnostics: Bool?
    /// Training rows per domain the probe is fitted on.
    public var probeTrainPerDomain: Int?
    /// Under MPI: `data` (default) or `grid` (`--parallel` overrides).
    public var parallel: ParallelMode?

    public init(name: String, model: String? = nil, data: DataConfig, methods: [MethodConfig]) {
        self.name = name
        self.model = model
        self.data = data
        self.methods = methods
    }

    public var resolvedOrderingSeeds: [UInt64] {
        if let s = orderingSeeds, !s.isEmpty { return s }
        return (0..<UInt64(max(1, orderings ?? ConfigDefaults.orderings))).map { $0 }
    }

    /// Every method and reference, resolved.
    public func resolvedMethods() throws -> [MethodSettings] {
        let t = training ?? TrainingDefaults()
        return try (methods + (references ?? [])).map { try MethodSettings.resolve($0, training: t) }
    }

    public func validate() throws {
        typealias B = ConfigBounds
        if let v = schemaVersion, v != Self.schemaVersion {
            let hint = v == 1 ? " (version 1 was the flat method format: docs/CONFIG.md maps every old field to its block)" : ""
            throw ConfigError.invalid(field: "schemaVersion", reason: "this build reads version \(Self.schemaVersion), the file says \(v)\(hint)")
        }
        try SafeName.check(name, field: "name")
        // a references-only experiment (e.g. the joint reference at another epoch count) is allowed
        guard !methods.isEmpty || !(references ?? []).isEmpty else {
            throw ConfigError.invalid(field: "methods", reason: "at least one method or reference is required")
        }
        try Bounds.check(orderings, B.orderings, "orderings")
        if let s = orderingSeeds { try Bounds.check(s.count, 0...B.orderings.upperBound, "orderingSeeds (count)") }
        try Bounds.check(threads, B.threads, "threads")
        try Bounds.check(latencySamples, B.latencySamples, "latencySamples")
        try Bounds.check(probeTrainPerDomain, B.probeTrainPerDomain, "probeTrainPerDomain")
        try data.validate()
        try (training ?? TrainingDefaults()).validate()
        var names = Set<String>()
        for s in try resolvedMethods() {
            guard names.insert(s.name).inserted else {
                throw ConfigError.invalid(field: "methods", reason: "two methods are named \"\(s.name)\": give one a `name`")
            }
        }
        for r in references ?? [] where r.kind != .joint && r.kind != .single {
            throw ConfigError.invalid(field: "references", reason: "only joint and single are references, got \(r.kind.rawValue)")
        }
    }

    /// Reads JSON, or YAML when the file ends in .yaml/.yml, strictly (unknown keys, old flat
    /// fields and bad enum values are errors), then validates. Errors name the file and the field.
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
                // duplicate keys (Foundation keeps one silently) and syntax errors with their byte offset
                do { _ = try StrictJSON.parse(data) } catch let e as StrictJSON.ParseError {
                    throw ConfigError.inFile(path: url.path, "not valid JSON: \(e)")
                }
                cfg = try JSONDecoder().decode(ExperimentConfig.self, from: data)
            }
            try cfg.validate()
            return cfg
        } catch let e as ConfigError {
            if case .inFile = e { throw e }
            throw ConfigError.inFile(path: url.path, e.description)
        } catch let e as DecodingError {
            throw ConfigError.inFile(path: url.path, ConfigError.describe(e))
        } catch {
            throw ConfigError.inFile(path: url.path, "\(error)")
        }
    }
}

extension ExperimentConfig {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case schemaVersion, name, model, data, methods, references, orderings, orderingSeeds, seed, threads, evalSplit, training,
             latencySamples, diagnostics, probeTrainPerDomain, parallel
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        self.init(name: try c.decode(String.self, forKey: .name), model: try c.decodeIfPresent(String.self, forKey: .model),
                  data: try c.decode(DataConfig.self, forKey: .data), methods: try c.decode([MethodConfig].self, forKey: .methods))
        schemaVersion = try c.decodeIfPresent(Int.self, forKey: .schemaVersion)
        references = try c.decodeIfPresent([MethodConfig].self, forKey: .references)
        orderings = try c.decodeIfPresent(Int.self, forKey: .orderings)
        orderingSeeds = try c.decodeIfPresent([UInt64].self, forKey: .orderingSeeds)
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed)
        threads = try c.decodeIfPresent(Int.self, forKey: .threads)
        evalSplit = try c.decodeChoice(EvalSplit.self, forKey: .evalSplit)
        training = try c.decodeIfPresent(TrainingDefaults.self, forKey: .training)
        latencySamples = try c.decodeIfPresent(Int.self, forKey: .latencySamples)
        diagnostics = try c.decodeIfPresent(Bool.self, forKey: .diagnostics)
        probeTrainPerDomain = try c.decodeIfPresent(Int.self, forKey: .probeTrainPerDomain)
        parallel = try c.decodeChoice(ParallelMode.self, forKey: .parallel)
    }
}
