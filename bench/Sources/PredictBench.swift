// `dualreplay predict --state DIR`: single-utterance latency of a saved state at 1 thread, next to
// the frozen encoder alone on the same utterances. The state is built for real (onboard domain by
// domain, save after each, as `dualreplay onboard` does), then reopened from disk with
// `ContinualState.open`, which is what the predict verb runs. Every utterance is timed on every
// path back to back (order rotated per utterance), so all paths see the same load.
import CKernels
import DualReplay
import Foundation

struct PredictRecord: Encodable {
    let bench: String
    /// encoder | sgemm | dual-replay | lora-replay
    let path: String
    let threads: Int
    let runs: Int
    /// Mean tokens per utterance, [CLS]/[SEP] included.
    let tokens: Double
    let p50Ms: Double
    let p99Ms: Double
    /// Median process CPU time per call (not inflated when other processes take the core).
    let cpuP50Ms: Double
    /// p50 / the encoder's p50 (wall), and the same for CPU time.
    let ratioToEncoder: Double
    let cpuRatioToEncoder: Double
    /// Share of the timed predictions whose domain and intent match the label (states only).
    let accuracy: Double?
    /// Onboarding every domain, saving after each, and reopening from disk (states only).
    let setupSeconds: Double?
    let load: Double?
    let note: String
}

/// The states' domains: the first four CLINC150 domains (10 train, val and test rows per intent,
/// class-balanced) when the data is present, otherwise four synthetic domains.
func predictBenchDomains(dataDir: String) -> (domains: [DomainData], source: String) {
    let url = URL(fileURLWithPath: dataDir).appendingPathComponent("clinc150/clinc150.jsonl")
    if let ds = try? IntentDataset.load(jsonl: url, options: LoadOptions(maxExamplesPerSplit: 150, subsampleSeed: 0)),
       ds.domains.count >= 4 {
        return (Array(ds.domains.prefix(4)), "clinc150 (first 4 domains, 150 rows per split each)")
    }
    let cfg = SyntheticConfig(domains: 4, intentsPerDomain: 6, trainPerIntent: 10, valPerIntent: 5, testPerIntent: 25, seed: 0)
    return (SyntheticCorpus.make(config: cfg), "synthetic (4 domains, clinc150 not found)")
}

/// General-stream text as `dualreplay onboard --init` picks it: general/general.jsonl, else synthetic.
func predictBenchGeneralTexts(dataDir: String) -> [String] {
    let url = URL(fileURLWithPath: dataDir).appendingPathComponent("general/general.jsonl")
    if let t = try? ExperimentSetup.readGeneralTexts(url), !t.isEmpty { return t }
    return SyntheticCorpus.generalText(count: 2000, seed: 0)
}

func benchPredict(_ o: BenchOptions, _ out: Reporter) throws -> [PredictRecord] {
    setComputeThreads(1)
    let modelURL = URL(fileURLWithPath: o.modelDir)
    var training = TrainingDefaults()
    training.epochs = 1
    let maxLength = training.maxLength
    let (domains, source) = predictBenchDomains(dataDir: o.dataDir)
    let general = predictBenchGeneralTexts(dataDir: o.dataDir)
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("dr-bench-predict-\(getpid())")
    try? FileManager.default.removeItem(at: root)
    defer { try? FileManager.default.removeItem(at: root) }

    // Build, save and reopen one state per method. The reopened state gets its own encoder, as a
    // fresh `dualreplay predict` process would load it.
    let serving = try SentenceEncoder(modelDirectory: modelURL, maxLength: maxLength)
    var states: [(name: String, state: ContinualState, setup: Double, routerLayer: Int?)] = []
    // (path name, method kind, router layer: nil = the method's default)
    let variants: [(String, MethodKind, Int?)] = [("dual-replay", .dualReplay, nil), ("lora-replay", .loraReplay, nil)]
        + o.routerLayers.map { ("dual-replay-router\($0)", .dualReplay, $0) }
    for (name, kind, layer) in variants {
        let t0 = now()
        var method = MethodConfig(kind: kind)
        method.router.layer = layer
        var cfg = ExperimentConfig(name: "bench-predict", data: DataConfig(), methods: [method])
        cfg.training = training
        cfg.seed = 0
        let dir = root.appendingPathComponent(name)
        let trainer = try SentenceEncoder(modelDirectory: modelURL, maxLength: maxLength)
        let state = try ContinualState.create(config: cfg, encoder: trainer, generalTexts: general, modelPath: o.modelDir,
                                              codeVersion: "dr-bench")
        for d in domains {
            _ = try state.onboard(d, source: "dr-bench:\(d.name)")
            try state.save(to: dir)
        }
        let opened = try ContinualState.open(dir, encoder: serving)
        let setup = now() - t0
        let routed = opened.router != nil
        states.append((name, opened, setup, routed ? opened.model.routerLayer : nil))
        print("# predict: \(name) state with \(opened.manifest.domains.count) domains built, saved and reopened in \(String(format: "%.1f", setup)) s"
              + (routed ? " (router reads layer \(opened.model.routerLayer) of \(opened.model.config.layers), gate-free prefix \(opened.model.gateFreePrefix))" : ""))
    }

    // The utterances: every domain's test rows, visited in a fixed scrambled order.
    let rows = domains.flatMap(\.test)
    let encoder = try SentenceEncoder(modelDirectory: modelURL, maxLength: maxLength)
    let cfg = encoder.config
    let lengths = rows.map { encoder.tokenizer.encode($0.text).count }
    let maxTokens = lengths.max() ?? 1
    let gemmBuffers = GemmBuffers(for: encoderGemms(cfg, tokens: maxTokens))
    print("# predict: \(rows.count) test utterances from \(source), \(o.latencyRuns) timed runs per path at 1 thread")

    // Paths timed per utterance by `runPath`; index 0, the encoder, is the ratios' reference.
    let names = ["encoder", "sgemm"] + states.map(\.name)
    var wall = [[Double]](repeating: [], count: names.count), cpu = wall
    var correct = [Int](repeating: 0, count: names.count)
    var tokens: [Double] = []
    func runPath(_ p: Int, _ row: IntentExample, _ record: Bool) {
        let w0 = now(), c0 = cpuTime()
        var hit = false
        switch p {
        case 0:
            let e = encoder.forward(PackedBatch([encoder.tokenizer.encode(row.text)])).sentenceEmbeddings()
            precondition(e.count == cfg.hidden)
        case 1:
            // the linear GEMMs of one encoder pass on this utterance, nothing else: the floor
            let n = encoder.tokenizer.encode(row.text).count
            let gemms = Array(repeating: encoderGemms(cfg, tokens: n), count: cfg.layers).flatMap { $0 }
            _ = SgemmReplay(gemms, buffers: gemmBuffers).run()
        default:
            let out = states[p - 2].state.predict([row.text])
            hit = out.count == 1 && out[0].domain == row.domain && out[0].intent == row.intent
        }
        let w1 = now(), c1 = cpuTime()
        if record {
            wall[p].append(w1 - w0)
            cpu[p].append(c1 - c0)
            if hit { correct[p] += 1 }
        }
    }
    let warmup = 50
    for i in 0..<(o.latencyRuns + warmup) {
        let k = (i * 7919) % rows.count
        if i >= warmup { tokens.append(Double(lengths[k])) }
        for j in 0..<names.count { runPath((i + j) % names.count, rows[k], i >= warmup) }
    }

    var records: [PredictRecord] = []
    let load = loadAverage()
    let meanTokens = tokens.reduce(0, +) / Double(max(tokens.count, 1))
    let encP50 = percentile(wall[0], 0.5), encCpu = percentile(cpu[0], 0.5)
    for (p, name) in names.enumerated() {
        let p50 = percentile(wall[p], 0.5), c50 = percentile(cpu[p], 0.5)
        let st = p >= 2 ? states[p - 2] : nil
        let note: String
        switch p {
        case 0: note = "tokenize + SentenceEncoder forward + mean-pool + normalise (SentenceEncoder, maxLength \(maxLength))"
        case 1: note = "OpenBLAS sgemm on the \(4 * cfg.layers) linear GEMMs of one encoder pass at the utterance's token count"
        default:
            note = "ContinualState.open + predict([text]) on \(domains.count) domains from \(source), 1 epoch each"
                + (st!.routerLayer.map { "; router reads frozen layer \($0), then the gated forward from layer \(st!.state.model.resumeLayer)" }
                    ?? "; no router, one forward")
        }
        let r = PredictRecord(bench: "predict_latency", path: name, threads: 1, runs: wall[p].count, tokens: meanTokens,
                              p50Ms: p50 * 1e3, p99Ms: percentile(wall[p], 0.99) * 1e3, cpuP50Ms: c50 * 1e3,
                              ratioToEncoder: p50 / encP50, cpuRatioToEncoder: c50 / encCpu,
                              accuracy: st == nil ? nil : Double(correct[p]) / Double(wall[p].count),
                              setupSeconds: st?.setup, load: load, note: note)
        records.append(r)
        out.emit(r)
    }
    return records
}

func printPredictTable(_ records: [PredictRecord]) {
    print("\n| path (1 thread) | runs | tokens | p50 ms | p99 ms | CPU p50 ms | p50 × encoder | CPU × encoder | accuracy | setup s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records {
        let acc = r.accuracy.map { String(format: "%.1f%%", 100 * $0) } ?? "-"
        print("| \(r.path) | \(r.runs) | \(fmt(r.tokens)) | \(fmt(r.p50Ms, 2)) | \(fmt(r.p99Ms, 2)) | \(fmt(r.cpuP50Ms, 2)) | "
              + "\(fmt(r.ratioToEncoder, 2)) | \(fmt(r.cpuRatioToEncoder, 2)) | \(acc) | \(fmt(r.setupSeconds)) | \(fmt(r.load)) |")
    }
}
