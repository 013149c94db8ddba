// Labelled intent data: the example type, the JSONL loader (see ../shared/data/README.md for the
// schema) and its errors. Loading is all-or-nothing: it returns a complete dataset or throws.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum Split: String, Codable, Hashable, Sendable, CaseIterable {
    case train, val, test
}

/// One utterance. Single-intent rows have one label; multi-intent rows (NLU++, MixATIS, MixSNIPS,
/// synthetic joined utterances) have several.
public struct IntentExample: Codable, Hashable, Sendable {
    public var text: String
    public var intents: [String]
    public var domain: String
    public var split: Split

    public init(text: String, intents: [String], domain: String, split: Split) {
        self.text = text
        self.intents = intents
        self.domain = domain
        self.split = split
    }

    public init(text: String, intent: String, domain: String, split: Split) {
        self.init(text: text, intents: [intent], domain: domain, split: split)
    }

    /// The first label (the only one for single-intent rows).
    public var intent: String { intents.first ?? "" }
    public var isMultiIntent: Bool { intents.count > 1 }

    // Encoded in the JSONL schema itself: `intent` is the labels joined with "#", and `intents` is
    // written only for rows that do not have exactly one label.
    private enum CodingKeys: String, CodingKey { case text, intent, intents, domain, split }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        text = try c.decode(String.self, forKey: .text)
        domain = try c.decode(String.self, forKey: .domain)
        split = try c.decode(Split.self, forKey: .split)
        if let list = try c.decodeIfPresent([String].self, forKey: .intents) {
            intents = list
        } else {
            intents = [try c.decode(String.self, forKey: .intent)]
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(text, forKey: .text)
        try c.encode(intents.joined(separator: "#"), forKey: .intent)
        try c.encode(domain, forKey: .domain)
        try c.encode(split, forKey: .split)
        if intents.count != 1 { try c.encode(intents, forKey: .intents) }
    }
}

/// Why a JSONL file was rejected. Every message names the file and a 1-based line.
public enum DataError: LocalizedError, Equatable {
    case unreadable(file: String, reason: String)
    case emptyFile(file: String)
    case lineTooLong(file: String, line: Int, bytes: Int, limit: Int)
    case invalidUTF8(file: String, line: Int)
    case malformedJSON(file: String, line: Int, reason: String)
    case notAnObject(file: String, line: Int)
    case missingField(file: String, line: Int, field: String)
    case wrongFieldType(file: String, line: Int, field: String, expected: String)
    case unknownSplit(file: String, line: Int, value: String)
    /// `label` was first seen under `firstDomain` on `firstLine`, and under `secondDomain` first on `secondLine`.
    case labelInTwoDomains(file: String, label: String, firstDomain: String, firstLine: Int, secondDomain: String, secondLine: Int)
    /// `domain` (first seen on `domainLine`) has no rows left in `split`.
    case emptySplit(file: String, domain: String, split: Split, domainLine: Int)
    /// A val/test row on `line` uses a label the domain's train split does not have.
    case unknownLabel(file: String, line: Int, label: String, domain: String, split: Split)
    /// Every row was excluded or dropped.
    case noDomains(file: String, lines: Int)
    /// Every row with an intent belongs to an excluded domain (`LoadOptions.excludedDomains`, e.g. "oos").
    case allExcluded(file: String, domains: [String], rows: Int)
    /// The file (or what a pipe or device delivered) is above the loader's size limit.
    case fileTooLarge(file: String, bytes: Int, limit: Int)
    /// A domain name that is empty or holds control, line-break or bidirectional characters.
    case invalidDomainName(file: String, line: Int, name: String, reason: String)

    public var file: String {
        switch self {
        case .unreadable(let f, _), .emptyFile(let f), .lineTooLong(let f, _, _, _), .invalidUTF8(let f, _),
             .malformedJSON(let f, _, _), .notAnObject(let f, _), .missingField(let f, _, _),
             .wrongFieldType(let f, _, _, _), .unknownSplit(let f, _, _), .labelInTwoDomains(let f, _, _, _, _, _),
             .emptySplit(let f, _, _, _), .unknownLabel(let f, _, _, _, _), .noDomains(let f, _),
             .allExcluded(let f, _, _), .fileTooLarge(let f, _, _), .invalidDomainName(let f, _, _, _):
            return f
        }
    }

    /// The 1-based line the error is about (for two-domain labels: the second domain's line).
    public var line: Int? {
        switch self {
        case .unreadable, .emptyFile, .noDomains, .allExcluded, .fileTooLarge: return nil
        case .lineTooLong(_, let l, _, _), .invalidUTF8(_, let l), .malformedJSON(_, let l, _), .notAnObject(_, let l),
             .missingField(_, let l, _), .wrongFieldType(_, let l, _, _), .unknownSplit(_, let l, _),
             .unknownLabel(_, let l, _, _, _), .invalidDomainName(_, let l, _, _):
            return l
        case .labelInTwoDomains(_, _, _, _, _, let l): return l
        case .emptySplit(_, _, _, let l): return l
        }
    }

    public var errorDescription: String? {
        switch self {
        case .unreadable(let f, let reason):
            return "\(f): cannot read the file (line 1): \(reason)"
        case .emptyFile(let f):
            return "\(f): line 1: the file is empty (no JSON rows)"
        case .lineTooLong(let f, let l, let bytes, let limit):
            return "\(f):\(l): line \(l) is \(bytes) bytes, over the limit of \(limit) bytes per line"
        case .invalidUTF8(let f, let l):
            return "\(f):\(l): line \(l) is not valid UTF-8"
        case .malformedJSON(let f, let l, let reason):
            return "\(f):\(l): line \(l) is not valid JSON (\(reason))"
        case .notAnObject(let f, let l):
            return "\(f):\(l): line \(l) is JSON but not an object"
        case .missingField(let f, let l, let field):
            return "\(f):\(l): line \(l) has no field \"\(field)\""
        case .wrongFieldType(let f, let l, let field, let expected):
            return "\(f):\(l): line \(l): field \"\(field)\" must be \(expected)"
        case .unknownSplit(let f, let l, let value):
            return "\(f):\(l): line \(l): unknown split \"\(value)\" (expected train, val or test)"
        case .labelInTwoDomains(let f, let label, let d1, let l1, let d2, let l2):
            return "\(f):\(l2): intent \"\(label)\" appears under two domains: \"\(d1)\" (first on line \(l1)) "
                + "and \"\(d2)\" (first on line \(l2)); rename it or set allowSharedLabels"
        case .emptySplit(let f, let domain, let split, let l):
            return "\(f):\(l): domain \"\(domain)\" (first on line \(l)) has an empty \(split.rawValue) split"
        case .unknownLabel(let f, let l, let label, let domain, let split):
            return "\(f):\(l): line \(l): \(split.rawValue) label \"\(label)\" of domain \"\(domain)\" "
                + "does not occur in that domain's train split"
        case .noDomains(let f, let lines):
            return "\(f): all \(lines) lines were excluded or dropped; no domain is left"
        case .allExcluded(let f, let domains, let rows):
            let names = domains.map { "\"\(DisplayText.escaped($0))\"" }.joined(separator: ", ")
            return "\(f): all \(rows) rows belong to \(domains.count == 1 ? "domain" : "domains") \(names), excluded by default as "
                + "out-of-scope (CLINC150's label for utterances outside every domain); to keep them as a domain, rename it in the "
                + "file (e.g. \"out_of_scope\"), or in an experiment config set the file's excludeDomains to []"
        case .fileTooLarge(let f, let bytes, let limit):
            return "\(f): \(bytes < 0 ? "more than \(limit)" : "\(bytes)") bytes, above the limit of \(limit) bytes for a data file: refusing to read it"
        case .invalidDomainName(let f, let l, let name, let reason):
            return "\(f):\(l): line \(l): domain \"\(DisplayText.escaped(name))\" is not usable: \(reason)"
        }
    }
}

/// What to do with rows that carry several intents.
public enum MultiLabelPolicy: String, Codable, Hashable, Sendable {
    /// Drop them (counted in `LoadReport.droppedMultiIntent`): single-label classification.
    case drop
    /// Keep them in their split as multi-label examples (NLU++).
    case keep
    /// Move test rows to `DomainData.multiIntentTest`, drop train/val ones (ATIS).
    case separate
}

/// What to do with a val/test label that the domain's train split lacks.
public enum UnknownLabelPolicy: String, Codable, Hashable, Sendable {
    case reject
    /// Drop the row (counted in `LoadReport.droppedUnknownLabel`); ATIS test has `atis_day_name`.
    case drop
}

public struct LoadOptions: Codable, Hashable, Sendable {
    /// Domains (original names) whose rows are skipped; CLINC150's out-of-scope rows are not a domain.
    public var excludedDomains: Set<String>
    /// Renames every domain to "<prefix>/<name>" so e.g. CLINC's and NLU++'s `banking` can coexist.
    public var domainPrefix: String?
    /// At most this many rows per split per domain, drawn class-balanced with `subsampleSeed`; nil = all.
    public var maxExamplesPerSplit: Int?
    public var subsampleSeed: UInt64
    public var multiLabel: MultiLabelPolicy
    /// Allow one label string under several domains (NLU++ shares generic intent modules). Class ids
    /// are per (domain, intent) in a `Scenario` either way.
    public var allowSharedLabels: Bool
    public var unknownLabels: UnknownLabelPolicy
    /// Longest accepted line in bytes (default 1 MB).
    public var maxLineBytes: Int

    public init(excludedDomains: Set<String> = ["oos"], domainPrefix: String? = nil, maxExamplesPerSplit: Int? = nil,
                subsampleSeed: UInt64 = 0, multiLabel: MultiLabelPolicy = .drop, allowSharedLabels: Bool = false,
                unknownLabels: UnknownLabelPolicy = .reject, maxLineBytes: Int = 1 << 20) {
        self.excludedDomains = excludedDomains
        self.domainPrefix = domainPrefix
        self.maxExamplesPerSplit = maxExamplesPerSplit
        self.subsampleSeed = subsampleSeed
        self.multiLabel = multiLabel
        self.allowSharedLabels = allowSharedLabels
        self.unknownLabels = unknownLabels
        self.maxLineBytes = maxLineBytes
    }

    func domainName(_ original: String) -> String {
        guard let prefix = domainPrefix, !prefix.isEmpty else { return original }
        return "\(prefix)/\(original)"
    }
}

/// Counts of what the loader read and left out.
public struct LoadReport: Codable, Hashable, Sendable {
    public var lines = 0
    public var blankLines = 0
    public var rowsKept = 0
    /// Rows of excluded domains.
    public var excludedRows = 0
    /// Rows with no intent (NLU++ slot-only rows).
    public var droppedNoIntent = 0
    public var droppedMultiIntent = 0
    /// Multi-intent test rows moved to `multiIntentTest` (policy `.separate`).
    public var separatedMultiIntent = 0
    public var droppedUnknownLabel = 0
    /// Rows left out by `maxExamplesPerSplit`.
    public var subsampledAway = 0

    public init() {}
}

/// One domain of a dataset. `intents` is the sorted set of labels of its train split.
public struct DomainData: Codable, Hashable, Sendable {
    public var name: String
    public var intents: [String]
    public var train: [IntentExample]
    public var val: [IntentExample]
    public var test: [IntentExample]
    /// Multi-intent test utterances (labels within `intents`), evaluated separately.
    public var multiIntentTest: [IntentExample]

    public init(name: String, intents: [String], train: [IntentExample], val: [IntentExample], test: [IntentExample],
                multiIntentTest: [IntentExample] = []) {
        self.name = name
        self.intents = intents
        self.train = train
        self.val = val
        self.test = test
        self.multiIntentTest = multiIntentTest
    }

    public func examples(_ split: Split) -> [IntentExample] {
        switch split {
        case .train: return train
        case .val: return val
        case .test: return test
        }
    }
}

/// A loaded JSONL file.
public struct IntentDataset: Sendable {
    /// Path of the file it came from.
    public let source: String
    /// Domains in order of first appearance in the file.
    public let domains: [DomainData]
    public let report: LoadReport

    public init(source: String, domains: [DomainData], report: LoadReport = LoadReport()) {
        self.source = source
        self.domains = domains
        self.report = report
    }

    public func domain(named name: String) -> DomainData? { domains.first { $0.name == name } }

    /// Loads and checks a JSONL file (schema in ../shared/data/README.md).
    ///
    /// Line-level checks (size, UTF-8, JSON, fields, split) stop at the first bad line. Then, over the
    /// rows of non-excluded domains: a label under two domains (unless `allowSharedLabels`), a val or
    /// test label missing from the domain's train split (unless `unknownLabels == .drop`), and a
    /// domain with an empty split. Subsampling happens last, so errors always describe the file.
    public static func load(jsonl url: URL, options: LoadOptions = LoadOptions()) throws -> IntentDataset {
        let file = url.path
        let rows = try JSONLReader.rows(of: url, maxLineBytes: options.maxLineBytes)
        var report = LoadReport()
        report.lines = rows.lines
        report.blankLines = rows.blank

        // Exclusion and the shared-label check.
        var kept: [JSONLRow] = []
        var labelHome: [String: (domain: String, line: Int)] = [:]
        var labelFirstLine: [String: [String: Int]] = [:]  // label -> domain -> first line
        for row in rows.rows {
            if options.excludedDomains.contains(row.domain) { report.excludedRows += 1; continue }
            for label in row.intents where !label.isEmpty {
                if labelFirstLine[label]?[row.domain] == nil { labelFirstLine[label, default: [:]][row.domain] = row.line }
                if let home = labelHome[label] {
                    if home.domain != row.domain && !options.allowSharedLabels {
                        throw DataError.labelInTwoDomains(
                            file: file, label: label, firstDomain: home.domain, firstLine: home.line,
                            secondDomain: row.domain, secondLine: labelFirstLine[label]![row.domain]!)
                    }
                } else {
                    labelHome[label] = (row.domain, row.line)
                }
            }
            kept.append(row)
        }

        // No-intent and multi-intent rows; domains in first-appearance order.
        var order: [String] = []
        var firstLine: [String: Int] = [:]
        var bySplit: [String: [Split: [JSONLRow]]] = [:]
        var separated: [String: [JSONLRow]] = [:]
        for row in kept {
            let labels = row.intents.filter { !$0.isEmpty }
            if labels.isEmpty { report.droppedNoIntent += 1; continue }
            if firstLine[row.domain] == nil { firstLine[row.domain] = row.line; order.append(row.domain) }
            var row = row
            row.intents = labels
            if labels.count > 1 {
                switch options.multiLabel {
                case .drop: report.droppedMultiIntent += 1; continue
                case .keep: break
                case .separate:
                    if row.split == .test { separated[row.domain, default: []].append(row); report.separatedMultiIntent += 1 }
                    else { report.droppedMultiIntent += 1 }
                    continue
                }
            }
            bySplit[row.domain, default: [:]][row.split, default: []].append(row)
        }
        if order.isEmpty {
            let excluded = Set(rows.rows.filter { options.excludedDomains.contains($0.domain) && $0.intents.contains { !$0.isEmpty } }.map(\.domain))
            if !excluded.isEmpty { throw DataError.allExcluded(file: file, domains: excluded.sorted(), rows: report.excludedRows) }
            throw DataError.noDomains(file: file, lines: rows.lines)
        }

        // Val/test labels must occur in train, checked in file order.
        var trainLabels: [String: Set<String>] = [:]
        for domain in order {
            trainLabels[domain] = Set((bySplit[domain]?[.train] ?? []).flatMap(\.intents))
        }
        func knownLabels(_ row: JSONLRow) throws -> Bool {
            let known = trainLabels[row.domain] ?? []
            guard let unknown = row.intents.first(where: { !known.contains($0) }) else { return true }
            if options.unknownLabels == .reject {
                throw DataError.unknownLabel(file: file, line: row.line, label: unknown, domain: row.domain, split: row.split)
            }
            report.droppedUnknownLabel += 1
            return false
        }
        var evalRows = order.flatMap { d in (bySplit[d]?[.val] ?? []) + (bySplit[d]?[.test] ?? []) + (separated[d] ?? []) }
        evalRows.sort { $0.line < $1.line }
        var rejected = Set<Int>()
        for row in evalRows {
            if try !knownLabels(row) { rejected.insert(row.line) }
        }
        if !rejected.isEmpty {
            for d in order {
                for split in [Split.val, .test] { bySplit[d]?[split]?.removeAll { rejected.contains($0.line) } }
                separated[d]?.removeAll { rejected.contains($0.line) }
            }
        }

        for domain in order {
            for split in Split.allCases where (bySplit[domain]?[split] ?? []).isEmpty {
                throw DataError.emptySplit(file: file, domain: options.domainName(domain), split: split, domainLine: firstLine[domain]!)
            }
        }

        // Subsample (class-balanced, seeded) and build the domains.
        var domains: [DomainData] = []
        for (d, domain) in order.enumerated() {
            let name = options.domainName(domain)
            func examples(_ rows: [JSONLRow]) -> [IntentExample] {
                rows.map { IntentExample(text: $0.text, intents: $0.intents, domain: name, split: $0.split) }
            }
            var train = bySplit[domain]![.train]!
            var val = bySplit[domain]![.val]!
            var test = bySplit[domain]![.test]!
            var multi = separated[domain] ?? []
            if let limit = options.maxExamplesPerSplit {
                let before = train.count + val.count + test.count + multi.count
                var rng = SplitMix64(seed: options.subsampleSeed, stream: UInt64(d))
                train = balancedSubsample(train, limit: limit, rng: &rng)
                let labels = Set(train.flatMap(\.intents))
                let inTrain = { (row: JSONLRow) in row.intents.allSatisfy(labels.contains) }
                val = balancedSubsample(val.filter(inTrain), limit: limit, rng: &rng)
                test = balancedSubsample(test.filter(inTrain), limit: limit, rng: &rng)
                multi = balancedSubsample(multi.filter(inTrain), limit: limit, rng: &rng)
                for (split, rows) in [(Split.val, val), (.test, test)] where rows.isEmpty {
                    throw DataError.emptySplit(file: file, domain: name, split: split, domainLine: firstLine[domain]!)
                }
                report.subsampledAway += before - (train.count + val.count + test.count + multi.count)
            }
            let intents = Set(train.flatMap(\.intents)).sorted()
            domains.append(DomainData(name: name, intents: intents, train: examples(train), val: examples(val),
                                      test: examples(test), multiIntentTest: examples(multi)))
        }
        report.rowsKept = domains.reduce(0) { $0 + $1.train.count + $1.val.count + $1.test.count + $1.multiIntentTest.count }
        return IntentDataset(source: file, domains: domains, report: report)
    }

    /// Reads the rows of one split of a multi-intent file (MixATIS/MixSNIPS format: `intents` lists).
    /// By default only rows with several intents are returned; `includeSingleIntent` keeps all of them.
    /// Domains are renamed with `options.domainPrefix`; excluded domains and rows without intents are
    /// skipped. Attach the result with `Scenario.attachingMultiIntentTest(_:)`, which checks labels.
    public static func loadMultiIntentTest(jsonl url: URL, split: Split = .test, includeSingleIntent: Bool = false,
                                           options: LoadOptions = LoadOptions()) throws -> [IntentExample] {
        let rows = try JSONLReader.rows(of: url, maxLineBytes: options.maxLineBytes)
        return rows.rows.compactMap { row in
            let labels = row.intents.filter { !$0.isEmpty }
            guard row.split == split, !options.excludedDomains.contains(row.domain), !labels.isEmpty,
                  includeSingleIntent || labels.count > 1 else { return nil }
            return IntentExample(text: row.text, intents: labels, domain: options.domainName(row.domain), split: row.split)
        }
    }

    /// Up to `limit` rows, round-robin over labels (sorted, by first label) so every label keeps
    /// examples; each label's rows in a seeded random order. The kept rows stay in file order.
    private static func balancedSubsample(_ rows: [JSONLRow], limit: Int, rng: inout SplitMix64) -> [JSONLRow] {
        let limit = max(limit, 0)
        guard rows.count > limit else { return rows }
        var byLabel: [String: [Int]] = [:]
        for (i, row) in rows.enumerated() { byLabel[row.intents[0], default: []].append(i) }
        let labels = byLabel.keys.sorted()
        var pools = labels.map { byLabel[$0]! }
        for p in pools.indices { pools[p].stableShuffle(using: &rng) }
        var chosen: [Int] = []
        var round = 0
        while chosen.count < limit {
            for p in pools.indices where round < pools[p].count && chosen.count < limit { chosen.append(pools[p][round]) }
            round += 1
        }
        return chosen.sorted().map { rows[$0] }
    }
}

