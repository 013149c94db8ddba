import Foundation

/// Turns an experiment's data section into a scenario and a general-text stream.
public enum ExperimentSetup {
    /// `data.directory`, else $DR_DATA, else ../shared/data.
    public static func dataDirectory(_ cfg: DataConfig) -> URL {
        if let d = cfg.directory { return URL(fileURLWithPath: d) }
        if let e = ProcessInfo.processInfo.environment["DR_DATA"], !e.isEmpty { return URL(fileURLWithPath: e) }
        return URL(fileURLWithPath: "../shared/data")
    }

    /// `multiIntentSplit`: the split of `data.multiIntentFiles` that is evaluated (the experiment's
    /// `evalSplit`: MixATIS/MixSNIPS have val and test rows, so validation runs never read test rows).
    public static func scenario(_ cfg: DataConfig, seed: UInt64 = 0, multiIntentSplit: Split = .test) throws -> (scenario: Scenario, general: [String]) {
        var domains: [DomainData] = []
        var general: [String] = []
        let dir = dataDirectory(cfg)
        if let files = cfg.files, !files.isEmpty {
            for f in files {
                let url = f.path.hasPrefix("/") ? URL(fileURLWithPath: f.path) : dir.appendingPathComponent(f.path)
                var o = LoadOptions()
                if let ex = f.excludeDomains { o.excludedDomains = Set(ex) }
                o.domainPrefix = f.domainPrefix
                o.multiLabel = f.multiLabel ?? ConfigDefaults.multiLabel
                o.allowSharedLabels = f.allowSharedLabels ?? ConfigDefaults.allowSharedLabels
                o.unknownLabels = f.unknownLabels ?? ConfigDefaults.unknownLabels
                let ds = try IntentDataset.load(jsonl: url, options: o)
                var kept = ds.domains
                if let only = f.domains {
                    kept = try only.map { name in
                        guard let d = ds.domains.first(where: { $0.name == name }) else {
                            throw ConfigError.invalid(field: "data.files[\(f.path)].domains", reason: "no domain \"\(name)\" in \(url.path) (it has: \(ds.domains.map(\.name).joined(separator: ", ")))")
                        }
                        return d
                    }
                }
                domains += kept
            }
            let g = cfg.general.map { $0.hasPrefix("/") ? URL(fileURLWithPath: $0) : dir.appendingPathComponent($0) }
                ?? dir.appendingPathComponent("general/general.jsonl")
            if FileManager.default.fileExists(atPath: g.path) {
                general = try readGeneralTexts(g)
            } else if cfg.general != nil {
                throw ConfigError.invalid(field: "data.general", reason: "\(g.path) does not exist")
            } else {
                general = SyntheticCorpus.generalText(count: 2000, seed: seed)
            }
        } else {
            let syn = cfg.synthetic ?? SyntheticConfig()
            domains = SyntheticCorpus.make(config: syn)
            general = SyntheticCorpus.generalText(count: 2000, seed: syn.seed &+ 1)
        }
        if let cap = cfg.maxTrainPerDomain { domains = domains.map { subsampleTrain($0, cap: cap) } }
        var scenario = try Scenario(domains: domains)
        for f in cfg.multiIntentFiles ?? [] {
            let url = f.path.hasPrefix("/") ? URL(fileURLWithPath: f.path) : dir.appendingPathComponent(f.path)
            var o = LoadOptions()
            o.domainPrefix = f.domainPrefix
            if let ex = f.excludeDomains { o.excludedDomains = Set(ex) }
            var rows = try IntentDataset.loadMultiIntentTest(jsonl: url, split: multiIntentSplit, options: o)
            if f.unknownLabels == .drop {
                rows = rows.filter { r in
                    guard let i = scenario.index(ofDomain: r.domain) else { return true }
                    return r.intents.allSatisfy { scenario.domains[i].globalLabel(of: $0) != nil }
                }
            }
            do {
                scenario = try scenario.attachingMultiIntentTest(rows)
            } catch {
                throw ConfigError.invalid(field: "data.multiIntentFiles[\(f.path)]", reason: "\(url.path): \(error.localizedDescription)")
            }
        }
        return (scenario, general)
    }

    /// The checks a config needs the model and the scenario for, before any run starts: adapter
    /// and router layers exist, `maxLength` fits the model's positions, and every method's
    /// training state (parameter store, replay buffer, base weights) fits in `physicalMemory`.
    /// The error names the field that makes it large.
    public static func checkResources(_ cfg: ExperimentConfig, model: BertConfig, scenario: Scenario,
                                      physicalMemory: UInt64 = ProcessInfo.processInfo.physicalMemory) throws {
        let training = cfg.training ?? TrainingDefaults()
        guard training.maxLength <= model.maxPositions else {
            throw ConfigError.outOfBounds(field: "training.maxLength", value: "\(training.maxLength)",
                                          bounds: "at most the model's \(model.maxPositions) positions")
        }
        let L = model.layers, C = model.hidden
        // embeddings, then per layer: attention (4 C×C + 4 C), feed-forward (2 C×I + I + C), two LayerNorms
        let base = (model.vocabSize + model.maxPositions + 2 + 2) * C
            + L * (4 * C * C + 4 * C + 2 * C * model.intermediate + model.intermediate + C + 4 * C)
        let limit = Int(clamping: physicalMemory)
        for s in try cfg.resolvedMethods() {
            let at = "methods[\(s.name)]"
            for l in s.spec.adapterLayers ?? [] where l >= L {
                throw ConfigError.outOfBounds(field: "\(at).adapter.layers", value: "\(l)", bounds: "below the model's \(L) layers")
            }
            if let l = s.spec.routerLayer, l > L {
                throw ConfigError.outOfBounds(field: "\(at).router.layer", value: "\(l)", bounds: "at most the model's \(L) layers")
            }
            var parts = s.estimatedTrainingBytes(hidden: C, layers: L, intents: scenario.numClasses, domains: scenario.count,
                                                 baseParameters: base)
            parts.append(.init(field: "model (frozen base weights)", bytes: 4 * base))
            if let b = training.bufferBytes { parts.append(.init(field: "training.bufferBytes", bytes: b)) }
            let total = parts.reduce(0) { a, p in a.addingReportingOverflow(p.bytes).overflow ? .max : a + p.bytes }
            if total > limit, let largest = parts.max(by: { $0.bytes < $1.bytes }) {
                let gb = { (b: Int) in String(format: "%.1f GB", Double(b) / 1e9) }
                throw ConfigError.invalid(field: largest.field, reason: "\(at) needs about \(gb(total)) for training "
                    + "(\(largest.field): \(gb(largest.bytes))), more than this machine's \(gb(limit)) of memory")
            }
        }
    }

    /// At most `cap` training examples, taken round-robin over intents (stratified, deterministic).
    static func subsampleTrain(_ d: DomainData, cap: Int) -> DomainData {
        guard d.train.count > cap else { return d }
        var byIntent: [String: [IntentExample]] = [:]
        for e in d.train { byIntent[e.intent, default: []].append(e) }
        var out: [IntentExample] = []
        var i = 0
        while out.count < cap {
            var added = false
            for intent in d.intents {
                if let rows = byIntent[intent], i < rows.count, out.count < cap { out.append(rows[i]); added = true }
            }
            if !added { break }
            i += 1
        }
        var copy = d
        copy.train = out
        return copy
    }

    /// The `text` of every train row of a general-text JSONL file; errors name file and line.
    public static func readGeneralTexts(_ url: URL) throws -> [String] {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw RunnerError.data("\(url.path): cannot read: \(error.localizedDescription)")
        }
        var out: [String] = []
        for (i, line) in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            if line.allSatisfy({ $0 == 32 || $0 == 13 }) { continue }
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                throw RunnerError.data("\(url.path):\(i + 1): not a JSON object")
            }
            guard let text = obj["text"] as? String else { throw RunnerError.data("\(url.path):\(i + 1): missing string field `text`") }
            if (obj["split"] as? String ?? "train") == "train" { out.append(text) }
        }
        guard !out.isEmpty else { throw RunnerError.data("\(url.path): no training rows") }
        return out
    }
}
