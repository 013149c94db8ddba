import Foundation

// MARK: - Manifest (state.json)

/// One seen domain: its intents and global class range, and the file holding its frozen val/test rows.
public struct DomainRecord: Codable, Equatable, Sendable {
    public var name: String
    /// Sorted; class k of the domain has global id `classOffset + k`.
    public var intents: [String]
    public var classOffset: Int
    /// Training examples it was trained on (head/tail classification of domains).
    public var trainExamples: Int
    /// Relative to the version directory.
    public var dataFile: String
}

public struct FileRecord: Codable, Equatable, Sendable {
    public var path: String
    public var bytes: Int
    /// FNV-1a 64 of the file's bytes, 16 hex digits.
    public var fnv1a64: String
}

public struct BaseModelInfo: Codable, Equatable, Sendable {
    /// `BertWeights.fingerprint()`: FNV-1a 64 of the frozen weights.
    public var fingerprint: String
    public var layers: Int
    public var hidden: Int
    public var vocabSize: Int
    /// Where the model was loaded from when the state was created (informative).
    public var path: String?
}

/// One row of the metrics history: the evaluation after a domain was onboarded.
public struct MetricsRow: Codable, Equatable, Sendable {
    public var version: Int
    public var domainAdded: String
    /// Seen domains in training order; the arrays below are indexed like it.
    public var domains: [String]
    public var routedF1: [Double]
    public var oracleF1: [Double]
    public var routedAccuracy: [Double]
    public var oracleAccuracy: [Double]
    public var validationF1: [Double]
    public var routerAccuracy: Double?
    public var createdAt: String
    /// [true domain][chosen domain] counts of the router on the eval rows (nil: no router, or
    /// written before it was recorded).
    public var routerConfusion: [[Int]]?
    /// The red lines this version raised (`StateDiff.redLines`; nil: written before they were kept).
    public var redLines: [String]?
    /// Domains whose gate row and head `remediate` replaced in this version (its row then
    /// replaces the one of the same last domain; nil for an onboarding).
    public var remediated: [String]? = nil
}

public struct StateManifest: Codable, Equatable, Sendable {
    public static let currentSchemaVersion = 1
    public static let formatName = "dualreplay.state"

    public var format: String = StateManifest.formatName
    public var schemaVersion: Int = StateManifest.currentSchemaVersion
    /// N of versions/N.
    public var version: Int
    public var createdAt: String
    public var codeVersion: String?
    public var baseModel: BaseModelInfo
    /// The experiment config the state follows: `methods[0]` and `training` (with `bufferBytes`
    /// fixed at creation), `seed`, `evalSplit`.
    public var config: ExperimentConfig
    public var settings: MethodSettings
    public var seed: UInt64
    public var byteBudget: Int
    public var domains: [DomainRecord]
    /// AdamW step counters: the model's (adapter, gates, heads, LoRA) and the router's.
    public var modelOptimizerStep: Int
    public var routerOptimizerStep: Int?
    /// SplitMix64 states: the training loop's generator and the model's initialiser.
    public var trainingRNG: UInt64
    public var modelRNG: UInt64
    /// Best validation F1 of every seen domain (the forgetting signal's reference).
    public var bestValidationF1: [Double]
    /// The parameter store's layout: names, shapes, offsets, trainable flags and rows.
    public var tensors: [ParameterStore.Tensor]
    /// Every other file of the version with its size and checksum.
    public var files: [FileRecord]
    /// FNV-1a 64 of this file with this field set to 16 zeros (filled in last).
    public var manifestChecksum: String = StateDirectory.zeroChecksum
}
