import Foundation

/// One JSONL file of the scenario.
public struct DataFileConfig: Codable, Equatable, Sendable {
    /// Path of the JSONL file (relative paths are resolved against `data.directory`).
    public var path: String
    /// Prefix for domain names ("nlupp" -> "nlupp/banking"), so equal names from two sets coexist.
    public var domainPrefix: String?
    /// Keep only these domains (after the prefix), in this order; nil = all.
    public var domains: [String]?
    public var excludeDomains: [String]?
    /// Rows with several intents (default `ConfigDefaults.multiLabel`).
    public var multiLabel: MultiLabelPolicy?
    public var allowSharedLabels: Bool?
    /// A val/test label never seen in training (default `ConfigDefaults.unknownLabels`).
    public var unknownLabels: UnknownLabelPolicy?

    public init(path: String, domainPrefix: String? = nil, domains: [String]? = nil) {
        self.path = path
        self.domainPrefix = domainPrefix
        self.domains = domains
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case path, domainPrefix, domains, excludeDomains, multiLabel, allowSharedLabels, unknownLabels
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        self.init(path: try c.decode(String.self, forKey: .path), domainPrefix: try c.decodeIfPresent(String.self, forKey: .domainPrefix),
                  domains: try c.decodeIfPresent([String].self, forKey: .domains))
        excludeDomains = try c.decodeIfPresent([String].self, forKey: .excludeDomains)
        multiLabel = try c.decodeChoice(MultiLabelPolicy.self, forKey: .multiLabel)
        allowSharedLabels = try c.decodeIfPresent(Bool.self, forKey: .allowSharedLabels)
        unknownLabels = try c.decodeChoice(UnknownLabelPolicy.self, forKey: .unknownLabels)
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

    func validate() throws {
        typealias B = ConfigBounds
        if files == nil && synthetic == nil {
            throw ConfigError.invalid(field: "data", reason: "give `files` (JSONL) or `synthetic`")
        }
        for (i, f) in (files ?? []).enumerated() where f.path.isEmpty {
            throw ConfigError.invalid(field: "data.files[\(i)].path", reason: "must not be empty")
        }
        for (i, f) in (multiIntentFiles ?? []).enumerated() where f.path.isEmpty {
            throw ConfigError.invalid(field: "data.multiIntentFiles[\(i)].path", reason: "must not be empty")
        }
        try Bounds.check(maxTrainPerDomain, B.perDomainCap, "data.maxTrainPerDomain")
        try Bounds.check(maxEvalPerDomain, B.perDomainCap, "data.maxEvalPerDomain")
        if let s = synthetic {
            try Bounds.check(s.domains, B.syntheticDomains, "data.synthetic.domains")
            try Bounds.check(s.intentsPerDomain, B.syntheticIntentsPerDomain, "data.synthetic.intentsPerDomain")
            try Bounds.check(s.trainPerIntent, B.syntheticPerIntent, "data.synthetic.trainPerIntent")
            try Bounds.check(s.valPerIntent, B.syntheticPerIntent, "data.synthetic.valPerIntent")
            try Bounds.check(s.testPerIntent, B.syntheticPerIntent, "data.synthetic.testPerIntent")
            try Bounds.check(s.multiIntentTestPerDomain, B.syntheticMultiIntentPerDomain, "data.synthetic.multiIntentTestPerDomain")
            try Bounds.check(real: s.headTailSkew, B.syntheticHeadTailSkew, "data.synthetic.headTailSkew")
            try Bounds.check(real: s.typoRate, 0...1, "data.synthetic.typoRate")
            try Bounds.check(s.headDomains, 1...max(1, s.domains), "data.synthetic.headDomains")
            try Bounds.check(s.minTrainPerIntent, 1...max(1, s.trainPerIntent), "data.synthetic.minTrainPerIntent")
            if let lo = s.intentsPerDomainMin { try Bounds.check(lo, 1...max(1, s.intentsPerDomain), "data.synthetic.intentsPerDomainMin") }
            // the corpus is held in memory: bound its size, not only each factor
            let rows = s.domains * s.intentsPerDomain * (s.trainPerIntent + s.valPerIntent + s.testPerIntent)
            try Bounds.check(rows, 1...B.perDomainCap.upperBound, "data.synthetic (domains × intentsPerDomain × examples per intent)")
        }
    }
}

extension DataConfig {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case directory, files, synthetic, general, multiIntentFiles, maxTrainPerDomain, maxEvalPerDomain
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        self.init(directory: try c.decodeIfPresent(String.self, forKey: .directory),
                  files: try c.decodeIfPresent([DataFileConfig].self, forKey: .files),
                  synthetic: try c.decodeIfPresent(StrictSynthetic.self, forKey: .synthetic)?.config,
                  general: try c.decodeIfPresent(String.self, forKey: .general),
                  maxTrainPerDomain: try c.decodeIfPresent(Int.self, forKey: .maxTrainPerDomain),
                  maxEvalPerDomain: try c.decodeIfPresent(Int.self, forKey: .maxEvalPerDomain))
        multiIntentFiles = try c.decodeIfPresent([DataFileConfig].self, forKey: .multiIntentFiles)
    }

    /// `SyntheticConfig` (Data/) decodes leniently; the known keys are its coding keys, so the
    /// check cannot drift from the type.
    private struct StrictSynthetic: Decodable {
        static let keys: [String] = SyntheticConfig.CodingKeys.allCases.map(\.stringValue).sorted()
        let config: SyntheticConfig
        init(from decoder: Decoder) throws {
            _ = try decoder.strictContainer(keyedBy: AnyConfigKey.self, known: Self.keys)
            config = try SyntheticConfig(from: decoder)
        }
    }
}
