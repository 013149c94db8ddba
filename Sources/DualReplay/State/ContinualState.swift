// A continual-learning model in production: created once, then one domain at a time is onboarded
// (trained by the same `DomainTrainer` the experiment runner uses), every known domain is
// re-evaluated on its frozen test split (`Evaluator`), and the whole state is saved as a new version.
import CKernels
import Foundation

/// One domain's change between two versions.
public struct DomainChange: Codable, Equatable, Sendable {
    public var domain: String
    /// Routed macro-F1 (0..1) before (nil for the new domain) and after.
    public var before: Double?
    public var after: Double
    public var bufferItems: Int?
    public var bufferBytes: Int?
    public var bufferQuota: Int?
    public var bufferFloor: Int?
}

/// What an onboarding changed: the report `onboard` prints.
public struct StateDiff: Codable, Equatable, Sendable {
    public var fromVersion: Int?
    public var toVersion: Int
    public var domainAdded: String
    public var domains: [DomainChange]
    /// Backward transfer of the routed F1 matrix (0..1; negative = forgetting).
    public var backwardTransferBefore: Double?
    public var backwardTransfer: Double
    public var routerAccuracyBefore: Double?
    public var routerAccuracy: Double?
    /// Mean routed F1 of the domains with the most training data minus that of the least
    /// (halves by training-set size; nil when fewer than two domains or no size difference).
    public var headTailGap: Double?
    public var generalBufferItems: Int?
    public var bufferBytesUsed: Int?
    public var byteBudget: Int
    public var redLines: [String]
}

/// One prediction of `ContinualState.predict`.
public struct Prediction: Codable, Equatable, Sendable {
    public struct DomainProbability: Codable, Equatable, Sendable {
        public var domain: String
        public var probability: Double
    }
    public var text: String
    public var domain: String
    public var intent: String
    /// Softmax probability of the intent within the routed domain's intents.
    public var confidence: Double
    /// The router's top-3 domains (nil for methods without a router).
    public var router: [DomainProbability]?
    /// Gate row (domain index) the adapter ran with.
    public var gate: Int
}

public enum OnboardError: LocalizedError, Equatable {
    case notOneDomain(file: String, found: [String])
    public var errorDescription: String? {
        switch self {
        case let .notOneDomain(f, found):
            return "\(f): a domain file must hold exactly one domain, found \(found.count)" + (found.isEmpty ? "" : ": \(found.joined(separator: ", "))")
        }
    }
}

public final class ContinualState {
    public let encoder: SentenceEncoder
    public internal(set) var manifest: StateManifest
    public internal(set) var metrics: [MetricsRow]
    /// Val and test rows of each domain (indexed like `manifest.domains`).
    public private(set) var domainExamples: [[IntentExample]]
    private(set) var learner: LearnerState
    public var progress: (String) -> Void = { _ in }
    /// The general stream's source texts; only needed while no domain is trained yet.
    private var generalTexts: [String]

    public var model: ContinualModel { learner.model }
    public var router: DomainRouter? { learner.router }
    public var settings: MethodSettings { manifest.settings }

    private init(encoder: SentenceEncoder, manifest: StateManifest, metrics: [MetricsRow], domainExamples: [[IntentExample]],
                 learner: LearnerState, generalTexts: [String]) {
        self.encoder = encoder
        self.manifest = manifest
        self.metrics = metrics
        self.domainExamples = domainExamples
        self.learner = learner
        self.generalTexts = generalTexts
    }

    /// A new state with no domain yet. `config.methods[0]` is the method; `config.training` its
    /// defaults (a nil `bufferBytes` is fixed from the first domain onboarded).
    public static func create(config: ExperimentConfig, encoder: SentenceEncoder, generalTexts: [String],
                              modelPath: String?, codeVersion: String? = nil) throws -> ContinualState {
        precondition(config.methods.count == 1, "a state follows exactly one method")
        let training = config.training ?? TrainingDefaults()
        let settings = try MethodSettings.resolve(config.methods[0], training: training)
        let w = encoder.weights
        let manifest = StateManifest(
            version: 0, createdAt: ISO8601DateFormatter().string(from: Date()), codeVersion: codeVersion,
            baseModel: BaseModelInfo(fingerprint: w.fingerprint(), layers: w.config.layers, hidden: w.config.hidden,
                                     vocabSize: w.config.vocabSize, path: modelPath),
            config: config, settings: settings, seed: config.seed ?? 0, byteBudget: training.bufferBytes ?? 0, domains: [],
            modelOptimizerStep: 0, routerOptimizerStep: nil, trainingRNG: 0, modelRNG: 0, bestValidationF1: [], tensors: [], files: [])
        // the model and buffers are built when the first domain fixes the byte budget (`onboard`)
        let placeholder = LearnerState(model: ContinualModel(base: w, spec: settings.spec, seed: 0), router: nil, rng: SplitMix64(seed: 0))
        return ContinualState(encoder: encoder, manifest: manifest, metrics: [], domainExamples: [], learner: placeholder,
                              generalTexts: generalTexts)
    }

    /// Rebuilds model, router, buffers and generators from a loaded state. The encoder must be
    /// the base model the state was trained on (fingerprint).
    public static func restore(_ loaded: LoadedState, encoder: SentenceEncoder) throws -> ContinualState {
        let mf = loaded.manifest
        let manifestPath = loaded.versionDirectory.appendingPathComponent(StateDirectory.manifestName).path
        let fp = encoder.weights.fingerprint()
        guard fp == mf.baseModel.fingerprint else {
            throw StateError.baseModelMismatch(file: manifestPath, saved: mf.baseModel.fingerprint, loaded: fp)
        }
        guard loaded.domainExamples.count == mf.domains.count, !mf.domains.isEmpty else {
            throw StateError.malformed(file: manifestPath, reason: "\(mf.domains.count) domains but \(loaded.domainExamples.count) domain files")
        }
        // the structure comes from the registry (no training is replayed); the values from the file
        let scenario = try makeScenario(mf, domains: try scenarioDomains(mf, loaded.domainExamples, file: manifestPath))
        if (mf.config.training ?? TrainingDefaults()).frozenBF16 && dr_bf16_available() == 0 {
            throw StateError.malformed(file: manifestPath, reason: "trained with training.frozenPrecision \"bf16\", which needs a CPU with AVX512-BF16; this one has none")
        }
        let m = ContinualModel(base: encoder.weights, spec: mf.settings.spec, seed: 0)
        // chunked gradients and inference threads as `DomainTrainer.makeModel` sets them for a new state
        m.useParallelism(mf.config.training ?? TrainingDefaults(), inference: Parallelism.inference)
        for d in scenario.domains { m.addDomain(name: d.name, intents: d.intents) }
        // the layout must match the saved one exactly: names, shapes, offsets
        let store = m.store
        guard store.tensors.count == mf.tensors.count else {
            throw StateError.tensorMismatch(file: manifestPath, tensor: "(layout)",
                                            reason: "the method's spec builds \(store.tensors.count) tensors, the state has \(mf.tensors.count)")
        }
        for (a, b) in zip(store.tensors, mf.tensors) where a.name != b.name || a.shape != b.shape || a.offset != b.offset {
            throw StateError.tensorMismatch(file: manifestPath, tensor: b.name,
                                            reason: "the method's spec builds \(a.name) \(a.shape) at \(a.offset), the state has \(b.shape) at \(b.offset)")
        }
        store.load(values: loaded.values, moment1: loaded.moment1, moment2: loaded.moment2)
        for t in mf.tensors {
            store.setTrainable(t.trainable) { $0.name == t.name }
            store.setTrainableRows(t.name, t.trainableRows)
        }
        m.rebuildViews()
        m.optimizerStep = mf.modelOptimizerStep
        m.rngState = SplitMix64(seed: mf.modelRNG)
        let st = LearnerState(model: m, router: mf.settings.router ? DomainRouter(model: m) : nil, rng: SplitMix64(seed: mf.trainingRNG))
        st.router?.step = mf.routerOptimizerStep ?? 0
        if let saved = loaded.routerFeatures, let router = st.router {
            let file = loaded.versionDirectory.appendingPathComponent(RouterFeatureFile.name).path
            if let e = saved.first(where: { $0.feature.count != m.config.hidden }) {
                throw StateError.malformed(file: file, reason: "features of \(e.feature.count) floats, the encoder's hidden size is \(m.config.hidden)")
            }
            router.restoreFeatures(saved)
        }
        st.bestValidationF1 = mf.bestValidationF1
        switch loaded.buffer {
        case .reservoir(let s)?: st.reservoir = try ReservoirBuffer(state: s)
        case .dualStream(let s)?: st.dual = try DualStreamBuffer(state: s)
        case nil: break
        }
        return ContinualState(encoder: encoder, manifest: mf, metrics: loaded.metrics, domainExamples: loaded.domainExamples,
                              learner: st, generalTexts: [])
    }

    /// Loads the current version of `dir` and restores it on `encoder`.
    public static func open(_ dir: URL, encoder: SentenceEncoder) throws -> ContinualState {
        try restore(try StateDirectory.load(dir), encoder: encoder)
    }

    static func scenarioDomains(_ mf: StateManifest, _ examples: [[IntentExample]], file: String) throws -> [DomainData] {
        try zip(mf.domains, examples).map { d, rows in
            let val = rows.filter { $0.split == .val }, test = rows.filter { $0.split == .test }
            guard !test.isEmpty else { throw StateError.malformed(file: file, reason: "domain \"\(d.name)\" has no test rows") }
            return DomainData(name: d.name, intents: d.intents, train: [], val: val, test: test)
        }
    }

    /// The scenario of `domains` in training order; its class offsets must be the registry's.
    static func makeScenario(_ mf: StateManifest, domains: [DomainData]) throws -> Scenario {
        let scenario = try Scenario(domains: domains)
        for (d, r) in zip(scenario.domains, mf.domains) where Int(d.labelOffset) != r.classOffset || d.intents != r.intents {
            throw StateError.malformed(file: StateDirectory.manifestName, reason: "domain \"\(r.name)\": class offset or intents do not match the registry")
        }
        return scenario
    }

    /// The state's training settings, with its byte budget once the first domain fixed it.
    var training: TrainingDefaults {
        var t = manifest.config.training ?? TrainingDefaults()
        if manifest.byteBudget > 0 { t.bufferBytes = manifest.byteBudget }
        return t
    }

    /// The rows of `split` the state evaluates a domain on (the config's cap applies).
    func rows(_ d: ScenarioDomain, _ split: Split) -> [IntentExample] {
        d.evaluationRows(split, cap: manifest.config.data.maxEvalPerDomain)
    }

    /// Exactly one domain from a JSONL file (errors name the file and line).
    public static func loadDomain(_ url: URL) throws -> DomainData {
        let ds = try IntentDataset.load(jsonl: url)
        guard ds.domains.count == 1 else { throw OnboardError.notOneDomain(file: url.path, found: ds.domains.map(\.name)) }
        return ds.domains[0]
    }

    // MARK: - Onboarding

    /// Checkpointing of one onboarding (see `OnboardingCheckpoint`): written to `url` every `every`
    /// steps (0: only when `shouldStop` asks to stop); `resume` continues an interrupted one.
    public struct CheckpointPlan {
        public var url: URL
        public var every: Int
        public var resume: OnboardingCheckpoint?
        public var shouldStop: () -> Bool
        public var afterStep: ((Int) -> Void)?
        /// false: no checkpoint file is written (ranks other than 0 of a data-parallel job, which
        /// compute the same checkpoint as rank 0).
        public var writes = true

        public init(url: URL, every: Int, resume: OnboardingCheckpoint? = nil, shouldStop: @escaping () -> Bool = { false },
                    afterStep: ((Int) -> Void)? = nil) {
            self.url = url
            self.every = every
            self.resume = resume
            self.shouldStop = shouldStop
            self.afterStep = afterStep
        }
    }

    /// Checksum of what decides training: method settings, seed and byte budget.
    var configChecksum: String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        var h = FNV1a()
        h.add((try? enc.encode(manifest.settings)) ?? Data())
        h.add(Data("seed \(manifest.seed) budget \(manifest.byteBudget)".utf8))
        return h.hex
    }

    /// Trains `domain` with `DomainTrainer.learn` (as the experiment's sequential run does), re-evaluates every known domain on
    /// its test split and returns the diff against the previous version. Nothing is saved here
    /// (but a checkpoint, with `checkpoint`). After an error, reopen the state before going on.
    public func onboard(_ domain: DomainData, source: String = "(domain)", checkpoint plan: CheckpointPlan? = nil) throws -> StateDiff {
        guard !manifest.domains.contains(where: { $0.name == domain.name }) else {
            throw StateError.domainExists(name: domain.name, file: source)
        }
        guard !domain.train.isEmpty, !domain.test.isEmpty else {
            throw StateError.invalidDomain(file: source, reason: "domain \"\(domain.name)\" needs train and test rows")
        }
        let known = try ContinualState.scenarioDomains(manifest, domainExamples, file: StateDirectory.manifestName)
        let first = manifest.domains.isEmpty
        let scenario = try ContinualState.makeScenario(manifest, domains: known + [domain])
        let tokens = TokenCache(tokenizer: encoder.tokenizer, maxLength: training.maxLength)
        let trainer = DomainTrainer(settings: settings, training: training, encoder: encoder, tokens: tokens)
        trainer.progress = progress
        var st = learner
        if first {
            manifest.byteBudget = ByteBudget.resolve(bytes: training.bufferBytes, examples: training.bufferExamples,
                                                     meanOf: scenario.domains.flatMap { tokens.ids($0.train.map(\.text)) })
            st = try trainer.makeLearner(seed: manifest.seed, byteBudget: manifest.byteBudget, generalTexts: generalTexts)
        }
        if let plan {
            let sum = OnboardingCheckpoint.domainChecksum(domain)
            let base = manifest.version, model = manifest.baseModel.fingerprint, config = configChecksum
            if let r = plan.resume {
                let file = plan.url.path
                guard r.domain == domain.name else {
                    throw CheckpointError.doesNotMatch(file: file, reason: "it continues domain \"\(r.domain)\", not \"\(domain.name)\"")
                }
                guard r.domainChecksum == sum else {
                    throw CheckpointError.doesNotMatch(file: file, reason: "the rows of domain \"\(domain.name)\" changed since it was written (\(source))")
                }
                guard r.baseVersion == base else {
                    throw CheckpointError.doesNotMatch(file: file, reason: "it was written on top of version \(r.baseVersion), the state is at version \(base)")
                }
                guard r.baseModel == model, r.configChecksum == config else {
                    throw CheckpointError.doesNotMatch(file: file, reason: "it was written with another base model or method configuration")
                }
                trainer.loop.resume = r.phase
            }
            trainer.loop.checkpointEvery = plan.every
            if plan.writes { trainer.loop.onCheckpoint = { phase in
                try OnboardingCheckpoint(domain: domain.name, domainChecksum: sum, baseVersion: base, baseModel: model,
                                         configChecksum: config, phase: phase).write(to: plan.url)
            } }
            trainer.loop.shouldStop = plan.shouldStop
            trainer.loop.afterStep = plan.afterStep
        }
        let seen = scenario.domains
        let k = seen.count - 1
        let step = try trainer.learn(st, domain: seen[k], validation: seen.map { rows($0, .val) }, label: "\(k + 1)")
        // evaluation of every seen domain on its frozen split
        let evalSplit = (manifest.config.evalSplit ?? ConfigDefaults.evalSplit).split
        let eval = try Evaluator(predictor: trainer.predictor(st), tokens: tokens).row(seen.map { rows($0, evalSplit) })
        let previous = metrics.last
        let fromVersion = first ? nil : manifest.version
        // commit to the in-memory state (a failed save leaves the directory as it was)
        if first { learner = st }
        manifest.domains.append(DomainRecord(name: domain.name, intents: seen[k].intents, classOffset: Int(seen[k].labelOffset),
                                             trainExamples: domain.train.count, dataFile: ""))
        domainExamples.append(domain.val + domain.test)
        let row = MetricsRow(version: manifest.version + 1, domainAdded: domain.name, domains: seen.map(\.name), routedF1: eval.routedF1,
                             oracleF1: eval.oracleF1, routedAccuracy: eval.routedAccuracy, oracleAccuracy: eval.oracleAccuracy,
                             validationF1: step.validationF1, routerAccuracy: eval.routerAccuracy,
                             createdAt: ISO8601DateFormatter().string(from: Date()), routerConfusion: eval.routerConfusion)
        metrics.append(row)
        generalTexts = []
        let d = diff(previous: previous, fromVersion: fromVersion)
        metrics[metrics.count - 1].redLines = d.redLines
        return d
    }

    /// The routed F1 matrix of the history (row i: after the i-th domain).
    public var routedMatrix: EvalMatrix {
        let names = manifest.domains.map(\.name)
        var m = EvalMatrix(domains: names)
        for (i, row) in metrics.enumerated() where i < names.count {
            for (j, f) in row.routedF1.enumerated() where j < names.count { m[afterTraining: i, domain: j] = f }
        }
        return m
    }

    func diff(previous: MetricsRow?, fromVersion: Int?) -> StateDiff {
        let st = learner
        let row = metrics.last!
        let names = manifest.domains.map(\.name)
        var occupancy: [Int32: (items: Int, bytes: Int)] = [:]
        if let d = st.dual { occupancy = d.occupancy() } else if let r = st.reservoir { occupancy = r.occupancy() }
        var changes: [DomainChange] = []
        var redLines: [String] = []
        for (j, name) in names.enumerated() {
            let before = previous.flatMap { p in p.domains.firstIndex(of: name).map { p.routedF1[$0] } }
            let occ = occupancy[Int32(j)]
            let floor = st.dual?.floorBytes(of: Int32(j))
            changes.append(DomainChange(domain: name, before: before, after: row.routedF1[j], bufferItems: occ?.items ?? (occupancy.isEmpty ? nil : 0),
                                        bufferBytes: occ?.bytes ?? (occupancy.isEmpty ? nil : 0),
                                        bufferQuota: st.dual?.quota(of: Int32(j)), bufferFloor: floor))
            if let floor, (occ?.bytes ?? 0) < floor {
                redLines.append("domain \"\(name)\" holds \(occ?.bytes ?? 0) buffer bytes, below its floor of \(floor)")
            }
        }
        let matrix = routedMatrix
        let bwt = matrix.backwardTransfer
        var bwtBefore: Double? = nil
        if names.count > 1 {
            let prevNames = Array(names.dropLast())
            var pm = EvalMatrix(domains: prevNames)
            for i in prevNames.indices { for j in prevNames.indices { pm[afterTraining: i, domain: j] = matrix[afterTraining: i, domain: j] } }
            bwtBefore = pm.backwardTransfer
        }
        if bwt < RedLines.backwardTransferLimit { redLines.append(String(format: "backward transfer %.1f points is below -5", 100 * bwt)) }
        let gap = RedLines.headTailGap(f1: row.routedF1, trainExamples: manifest.domains.map(\.trainExamples))
        if let gap, gap > RedLines.headTailGapLimit { redLines.append(String(format: "head-vs-tail F1 gap %.1f points is above 5", 100 * gap)) }
        return StateDiff(fromVersion: fromVersion, toVersion: manifest.version + 1, domainAdded: row.domainAdded, domains: changes,
                         backwardTransferBefore: bwtBefore, backwardTransfer: bwt,
                         routerAccuracyBefore: previous?.routerAccuracy, routerAccuracy: row.routerAccuracy, headTailGap: gap,
                         generalBufferItems: st.dual?.generalCount, bufferBytesUsed: st.dual?.bytesUsed ?? st.reservoir?.bytesUsed,
                         byteBudget: manifest.byteBudget, redLines: redLines)
    }

    // MARK: - Saving

    /// Everything needed to continue, as `StateDirectory.save` writes it.
    public func snapshot() -> StateSnapshot {
        let st = learner
        var mf = manifest
        let store = st.model.store
        mf.tensors = store.tensors
        mf.modelOptimizerStep = st.model.optimizerStep
        mf.modelRNG = st.model.rngState.state
        mf.routerOptimizerStep = st.router?.step
        mf.trainingRNG = st.rng.state
        mf.bestValidationF1 = st.bestValidationF1
        var config = mf.config
        var training = config.training ?? TrainingDefaults()
        training.bufferBytes = mf.byteBudget
        config.training = training
        mf.config = config
        let buffer: ReplayBufferSnapshot? = st.dual.map { .dualStream($0.state) } ?? st.reservoir.map { .reservoir($0.state) }
        // the kept router features of the buffered examples, in buffer order, each once
        let features: [RouterFeatureFile.Entry]? = st.router.map { router in
            var seen = Set<DomainRouter.FeatureKey>()
            return st.routerFeatureKeys(before: st.model.domains.count).compactMap { key in
                guard seen.insert(key).inserted, let f = router.trainingFeatures[key] else { return nil }
                return (key, f)
            }
        }
        return store.withArrays { v, m1, m2 in
            StateSnapshot(manifest: mf, values: v, moment1: m1, moment2: m2, buffer: buffer, metrics: metrics, domainExamples: domainExamples,
                          routerFeatures: features)
        }
    }

    /// Saves a new version into `dir` and makes it current; returns its number.
    @discardableResult
    /// Another process saved this very state as `version` (rank 0 of a data-parallel job, for
    /// the other ranks, which hold the same state in memory but write nothing).
    public func markSaved(as version: Int) { manifest.version = version }

    public func save(to dir: URL) throws -> Int {
        precondition(!manifest.domains.isEmpty, "save: no domain onboarded yet")
        let v = try StateDirectory.save(snapshot(), to: dir)
        manifest.version = v
        return v
    }

    // MARK: - Prediction

    /// Routed predictions for texts through the `RoutedPredictor`: router → gate → head of the
    /// routed domain (without a router, the argmax over every seen class decides the domain).
    public func predict(_ texts: [String]) -> [Prediction] {
        let st = learner, m = st.model, K = m.domains.count
        let maxLength = (manifest.config.training ?? TrainingDefaults()).maxLength
        let predictor = RoutedPredictor(model: m, router: st.router, settings: settings)
        let out = predictor.predict(texts.map { encoder.tokenizer.encode($0, maxLength: maxLength) }, features: .live)
        return texts.indices.map { b in
            let d = m.domains[out.domains[b]]
            let top = out.probabilities.map { p in
                (0..<K).sorted { p[b * K + $0] > p[b * K + $1] }.prefix(3)
                    .map { Prediction.DomainProbability(domain: m.domains[$0].name, probability: Double(p[b * K + $0])) }
            }
            return Prediction(text: texts[b], domain: d.name, intent: d.intents[out.classes[b] - d.classOffset],
                              confidence: out.confidence(b, model: m), router: top, gate: st.router == nil ? K - 1 : out.domains[b])
        }
    }
}
