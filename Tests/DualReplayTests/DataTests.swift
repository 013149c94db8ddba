import Foundation
import Testing
@testable import DualReplay

// MARK: - Helpers

private func row(_ text: String, _ intent: String, _ domain: String, _ split: String) -> String {
    "{\"text\": \"\(text)\", \"intent\": \"\(intent)\", \"domain\": \"\(domain)\", \"split\": \"\(split)\"}"
}

private func multiRow(_ text: String, _ intents: [String], _ domain: String, _ split: String) -> String {
    let list = intents.map { "\"\($0)\"" }.joined(separator: ", ")
    return "{\"text\": \"\(text)\", \"intent\": \"\(intents.joined(separator: "#"))\", \"domain\": \"\(domain)\", "
        + "\"split\": \"\(split)\", \"intents\": [\(list)]}"
}

/// Two intents per domain, every split filled: a valid file.
private func validLines(domains: [String] = ["alpha", "beta"]) -> [String] {
    var lines: [String] = []
    for d in domains {
        for split in ["train", "train", "val", "test"] {
            lines.append(row("\(d) open the thing", "\(d)_open", d, split))
            lines.append(row("\(d) close the thing", "\(d)_close", d, split))
        }
    }
    return lines
}

private func write(_ lines: [String], name: String = "data.jsonl", trailingNewline: Bool = true) throws -> URL {
    let text = lines.joined(separator: "\n") + (trailingNewline ? "\n" : "")
    return try write(Data(text.utf8), name: name)
}

private func write(_ data: Data, name: String = "data.jsonl") throws -> URL {
    let url = try TestPaths.tempDir().appendingPathComponent(name)
    try data.write(to: url)
    return url
}

private func loadError(_ url: URL, _ options: LoadOptions = LoadOptions()) -> DataError? {
    do {
        _ = try IntentDataset.load(jsonl: url, options: options)
        return nil
    } catch let error as DataError {
        return error
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}

/// The message names the file and the 1-based line.
private func expectMessage(_ error: DataError?, names url: URL, line: Int, sourceLocation: SourceLocation = #_sourceLocation) {
    let message = error?.errorDescription ?? ""
    #expect(message.contains(url.lastPathComponent), "message should name the file: \(message)", sourceLocation: sourceLocation)
    #expect(message.contains("line \(line)"), "message should name line \(line): \(message)", sourceLocation: sourceLocation)
    #expect(error?.line == line, sourceLocation: sourceLocation)
    #expect(error?.file == url.path, sourceLocation: sourceLocation)
}

// MARK: - Loader errors

@Suite("DataTests")
struct DataTests {
    @Test func malformedJSONOnLine3() throws {
        var lines = validLines()
        lines[2] = "{\"text\": \"broken\", \"intent\": "
        let url = try write(lines, name: "malformed.jsonl")
        let error = loadError(url)
        guard case .malformedJSON(_, 3, _)? = error else { Issue.record("expected malformedJSON on line 3, got \(String(describing: error))"); return }
        expectMessage(error, names: url, line: 3)
    }

    @Test func notAnObject() throws {
        var lines = validLines()
        lines[1] = "[1, 2, 3]"
        let url = try write(lines)
        let error = loadError(url)
        guard case .notAnObject(_, 2)? = error else { Issue.record("got \(String(describing: error))"); return }
        expectMessage(error, names: url, line: 2)
    }

    @Test func missingAndIllTypedFields() throws {
        for field in ["text", "intent", "domain", "split"] {
            var lines = validLines()
            lines[3] = lines[3].replacingOccurrences(of: "\"\(field)\"", with: "\"other_\(field)\"")
            let url = try write(lines, name: "missing-\(field).jsonl")
            let error = loadError(url)
            #expect(error == .missingField(file: url.path, line: 4, field: field))
            expectMessage(error, names: url, line: 4)
            #expect(error?.errorDescription?.contains("\"\(field)\"") == true)
        }
        var lines = validLines()
        lines[4] = "{\"text\": 17, \"intent\": \"a\", \"domain\": \"alpha\", \"split\": \"train\"}"
        var url = try write(lines, name: "type.jsonl")
        #expect(loadError(url) == .wrongFieldType(file: url.path, line: 5, field: "text", expected: "a string"))
        expectMessage(loadError(url), names: url, line: 5)

        lines = validLines()
        lines[0] = "{\"text\": \"t\", \"intent\": \"a\", \"domain\": \"alpha\", \"split\": true}"
        url = try write(lines, name: "type2.jsonl")
        #expect(loadError(url) == .wrongFieldType(file: url.path, line: 1, field: "split", expected: "a string"))

        lines = validLines()
        lines[0] = "{\"text\": \"t\", \"intent\": \"a\", \"domain\": \"alpha\", \"split\": \"train\", \"intents\": \"a\"}"
        url = try write(lines, name: "type3.jsonl")
        #expect(loadError(url) == .wrongFieldType(file: url.path, line: 1, field: "intents", expected: "an array of strings"))
    }

    @Test func unknownSplitValue() throws {
        var lines = validLines()
        lines[5] = row("x", "alpha_open", "alpha", "dev")
        let url = try write(lines)
        let error = loadError(url)
        #expect(error == .unknownSplit(file: url.path, line: 6, value: "dev"))
        expectMessage(error, names: url, line: 6)
    }

    @Test func nonUTF8Bytes() throws {
        var data = Data((validLines()[0] + "\n").utf8)
        data.append(Data("{\"text\": \"caf".utf8))
        data.append(contentsOf: [0xC3, 0x28, 0xFF])  // invalid sequence
        data.append(Data("\", \"intent\": \"alpha_open\", \"domain\": \"alpha\", \"split\": \"train\"}\n".utf8))
        data.append(Data((validLines().dropFirst().joined(separator: "\n") + "\n").utf8))
        let url = try write(data, name: "latin.jsonl")
        let error = loadError(url)
        #expect(error == .invalidUTF8(file: url.path, line: 2))
        expectMessage(error, names: url, line: 2)
    }

    @Test func lineOverTheLimit() throws {
        var lines = validLines()
        let big = String(repeating: "a", count: 2 << 20)  // 2 MB of text
        lines[1] = row(big, "alpha_open", "alpha", "train")
        let url = try write(lines, name: "huge.jsonl")
        let error = loadError(url, LoadOptions(maxLineBytes: 1 << 20))
        guard case .lineTooLong(_, 2, let bytes, 1_048_576)? = error else { Issue.record("got \(String(describing: error))"); return }
        #expect(bytes > 2 << 20)
        expectMessage(error, names: url, line: 2)
        #expect(error?.errorDescription?.contains("limit") == true)
        // The same file loads when the limit allows it.
        #expect(throws: Never.self) { try IntentDataset.load(jsonl: url, options: LoadOptions(maxLineBytes: 4 << 20)) }
    }

    @Test func emptyFile() throws {
        let url = try write(Data(), name: "empty.jsonl")
        let error = loadError(url)
        #expect(error == .emptyFile(file: url.path))
        #expect(error?.errorDescription?.contains("empty.jsonl") == true)
        #expect(error?.errorDescription?.contains("line 1") == true)
        let blank = try write(["", "   ", ""], name: "blank.jsonl")
        #expect(loadError(blank) == .emptyFile(file: blank.path))
    }

    @Test func labelUnderTwoDomains() throws {
        var lines = validLines(domains: ["alpha", "beta"])
        // beta's rows start on line 9; make line 11 use alpha's label.
        lines[10] = row("beta thing", "alpha_open", "beta", "train")
        let url = try write(lines, name: "shared.jsonl")
        let error = loadError(url)
        #expect(error == .labelInTwoDomains(file: url.path, label: "alpha_open", firstDomain: "alpha", firstLine: 1,
                                            secondDomain: "beta", secondLine: 11))
        let message = error?.errorDescription ?? ""
        #expect(message.contains("shared.jsonl") && message.contains("\"alpha\"") && message.contains("\"beta\""))
        #expect(message.contains("line 1") && message.contains("line 11"))
        // Allowed on request (NLU++ shares labels across banking and hotels).
        var lines2 = validLines(domains: ["alpha", "beta"])
        for i in 8..<16 { lines2[i] = lines2[i].replacingOccurrences(of: "beta_", with: "alpha_") }
        let url2 = try write(lines2)
        let dataset = try IntentDataset.load(jsonl: url2, options: LoadOptions(allowSharedLabels: true))
        #expect(dataset.domains.map(\.intents) == [["alpha_close", "alpha_open"], ["alpha_close", "alpha_open"]])
    }

    @Test func domainWithEmptySplit() throws {
        var lines = validLines(domains: ["alpha", "beta"])
        lines.removeAll { $0.contains("\"beta\"") && $0.contains("\"val\"") }
        let url = try write(lines, name: "noval.jsonl")
        let error = loadError(url)
        #expect(error == .emptySplit(file: url.path, domain: "beta", split: .val, domainLine: 9))
        expectMessage(error, names: url, line: 9)
        #expect(error?.errorDescription?.contains("val") == true)
    }

    @Test func unknownTestLabel() throws {
        var lines = validLines(domains: ["alpha"])
        lines.append(row("alpha spin the thing", "alpha_spin", "alpha", "test"))  // line 9
        let url = try write(lines, name: "unknown.jsonl")
        let error = loadError(url)
        #expect(error == .unknownLabel(file: url.path, line: 9, label: "alpha_spin", domain: "alpha", split: .test))
        expectMessage(error, names: url, line: 9)
        // Dropped and counted on request (ATIS test has atis_day_name, absent from train).
        let dataset = try IntentDataset.load(jsonl: url, options: LoadOptions(unknownLabels: .drop))
        #expect(dataset.report.droppedUnknownLabel == 1)
        #expect(dataset.domains[0].test.count == 2)
    }

    // MARK: Loader behaviour

    @Test func loadsDomainsInFileOrderWithOptions() throws {
        var lines = validLines(domains: ["zeta", "alpha"])
        lines.insert(row("what is the meaning of life", "oos", "oos", "train"), at: 3)
        lines.insert("", at: 5)
        let text = lines.joined(separator: "\r\n") + "\r\n"
        let url = try write(Data(text.utf8))
        let dataset = try IntentDataset.load(jsonl: url)
        #expect(dataset.domains.map(\.name) == ["zeta", "alpha"])
        #expect(dataset.domains[0].intents == ["zeta_close", "zeta_open"])
        #expect(dataset.domains[0].train.count == 4 && dataset.domains[0].val.count == 2 && dataset.domains[0].test.count == 2)
        #expect(dataset.domains[0].train.allSatisfy { $0.split == .train && $0.domain == "zeta" })
        #expect(dataset.report.excludedRows == 1 && dataset.report.blankLines == 1 && dataset.report.rowsKept == 16)
        #expect(dataset.report.lines == 18)

        let prefixed = try IntentDataset.load(jsonl: url, options: LoadOptions(domainPrefix: "nlupp"))
        #expect(prefixed.domains.map(\.name) == ["nlupp/zeta", "nlupp/alpha"])
        #expect(prefixed.domains[1].test.allSatisfy { $0.domain == "nlupp/alpha" })

        let zetaOnly = try IntentDataset.load(jsonl: url, options: LoadOptions(excludedDomains: ["alpha", "oos"]))
        #expect(zetaOnly.domains.map(\.name) == ["zeta"])
        #expect(zetaOnly.report.excludedRows == 9)
    }

    @Test func multiLabelPolicies() throws {
        var lines = validLines(domains: ["hotel"])
        lines.append(multiRow("book a room and cancel the other", ["hotel_open", "hotel_close"], "hotel", "train"))
        lines.append(multiRow("open and close", ["hotel_open", "hotel_close"], "hotel", "test"))
        lines.append(multiRow("for jodie", [], "hotel", "train"))  // slot-only NLU++ row
        let url = try write(lines)

        let dropped = try IntentDataset.load(jsonl: url)
        #expect(dropped.report.droppedMultiIntent == 2 && dropped.report.droppedNoIntent == 1)
        #expect(dropped.domains[0].train.count == 4 && dropped.domains[0].test.count == 2)

        let kept = try IntentDataset.load(jsonl: url, options: LoadOptions(multiLabel: .keep))
        #expect(kept.domains[0].train.count == 5 && kept.domains[0].test.count == 3)
        #expect(kept.domains[0].train.last?.intents == ["hotel_open", "hotel_close"])
        #expect(kept.domains[0].train.last?.intent == "hotel_open")
        #expect(kept.report.droppedNoIntent == 1)

        let separated = try IntentDataset.load(jsonl: url, options: LoadOptions(multiLabel: .separate))
        #expect(separated.domains[0].multiIntentTest.count == 1)
        #expect(separated.domains[0].multiIntentTest[0].isMultiIntent)
        #expect(separated.domains[0].test.count == 2)
        #expect(separated.report.separatedMultiIntent == 1 && separated.report.droppedMultiIntent == 1)
    }

    @Test func seededClassBalancedSubsample() throws {
        var lines: [String] = []
        for split in ["train", "val", "test"] {
            for i in 0..<30 {
                lines.append(row("utterance \(split) \(i)", "d_\(i % 3)", "d", split))
            }
        }
        let url = try write(lines)
        let options = LoadOptions(maxExamplesPerSplit: 7, subsampleSeed: 3)
        let a = try IntentDataset.load(jsonl: url, options: options)
        let b = try IntentDataset.load(jsonl: url, options: options)
        #expect(a.domains == b.domains)
        #expect(a.domains[0].train.count == 7 && a.domains[0].val.count == 7 && a.domains[0].test.count == 7)
        #expect(Set(a.domains[0].train.map(\.intent)) == ["d_0", "d_1", "d_2"])
        #expect(a.report.subsampledAway == 90 - 21)
        let c = try IntentDataset.load(jsonl: url, options: LoadOptions(maxExamplesPerSplit: 7, subsampleSeed: 4))
        #expect(c.domains[0].train != a.domains[0].train)
        // Kept rows stay in file order.
        let numbers = a.domains[0].train.map { Int($0.text.split(separator: " ").last!)! }
        #expect(numbers == numbers.sorted())
    }

    @Test func exampleCodableMatchesJSONLSchema() throws {
        let single = IntentExample(text: "hi", intent: "greet", domain: "d", split: .val)
        let data = try JSONEncoder().encode(single)
        let object = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        #expect(object?["intent"] as? String == "greet" && object?["intents"] == nil)
        #expect(try JSONDecoder().decode(IntentExample.self, from: data) == single)
        let multi = IntentExample(text: "a and b", intents: ["a", "b"], domain: "d", split: .test)
        #expect(try JSONDecoder().decode(IntentExample.self, from: JSONEncoder().encode(multi)) == multi)
    }

    // MARK: Scenario

    private func smallDomains() -> [DomainData] {
        SyntheticCorpus.make(config: SyntheticConfig(domains: 5, intentsPerDomain: 4, trainPerIntent: 5, valPerIntent: 2,
                                                     testPerIntent: 3, seed: 11))
    }

    @Test func scenarioOffsetsAndOrdering() throws {
        let scenario = try Scenario(domains: smallDomains())
        #expect(scenario.count == 5 && scenario.numClasses == 20)
        #expect(scenario.domains.map(\.labelOffset) == [0, 4, 8, 12, 16])
        #expect(scenario.ordering(seed: 0) == scenario)

        let shuffled = scenario.ordering(seed: 42)
        #expect(shuffled == scenario.ordering(seed: 42))
        #expect(Set(shuffled.domainNames) == Set(scenario.domainNames))
        #expect(shuffled.domainNames != scenario.domainNames)
        #expect(shuffled.domains.map(\.labelOffset) == [0, 4, 8, 12, 16])

        // Every (domain, intent) has its own global id, and ids map back.
        var ids = Set<Int32>()
        for (i, d) in shuffled.domains.enumerated() {
            for intent in d.intents {
                let id = try #require(d.globalLabel(of: intent))
                #expect(ids.insert(id).inserted)
                #expect(shuffled.domainIndex(forGlobalLabel: id) == i)
                #expect(d.intent(forGlobalLabel: id) == intent)
            }
        }
        #expect(ids == Set(0..<20))
        #expect(shuffled.domains[0].globalLabel(of: "nope") == nil)
    }

    @Test func trainingExamplesNeverReturnTestRows() throws {
        var domains = smallDomains()
        // A careless caller puts test and val rows into the train list.
        domains[1].train += domains[1].test + domains[1].val
        let scenario = try Scenario(domains: domains)
        for i in 0..<scenario.count {
            let train = scenario.trainingExamples(domain: i)
            #expect(!train.isEmpty && train.allSatisfy { $0.split == .train })
            #expect(scenario.testExamples(domain: i).allSatisfy { $0.split == .test })
            #expect(scenario.validationExamples(domain: i).allSatisfy { $0.split == .val })
        }
        #expect(scenario.trainingExamples(domain: 1).count == 20)
    }

    @Test func fingerprintIsStableAndContentSensitive() throws {
        let a = try Scenario(domains: smallDomains())
        let b = try Scenario(domains: smallDomains())
        #expect(a.fingerprint == b.fingerprint && a.fingerprint.count == 16)
        var changed = smallDomains()
        changed[2].test[0].text += "!"
        #expect(try Scenario(domains: changed).fingerprint != a.fingerprint)
        // Row order inside a split does not matter; domain order does, except for contentFingerprint.
        var reordered = smallDomains()
        reordered[0].train.reverse()
        #expect(try Scenario(domains: reordered).fingerprint == a.fingerprint)
        let permuted = a.ordering(seed: 9)
        #expect(permuted.fingerprint != a.fingerprint)
        #expect(permuted.contentFingerprint == a.contentFingerprint)
        #expect(FNV1a.of("a") == 0xAF63_DC4C_8601_EC8C)  // FNV-1a 64 reference value
    }

    @Test func scenarioErrors() throws {
        let domains = smallDomains()
        #expect(throws: ScenarioError.duplicateDomain(domains[0].name)) { try Scenario(domains: [domains[0], domains[0]]) }
        #expect(throws: ScenarioError.emptyScenario) { try Scenario(domains: []) }
        let scenario = try Scenario(domains: domains)
        let bad = IntentExample(text: "x and y", intents: [domains[0].intents[0], "other.intent"], domain: domains[0].name, split: .test)
        #expect(throws: ScenarioError.unknownLabel(label: "other.intent", domain: domains[0].name)) {
            try scenario.attachingMultiIntentTest([bad])
        }
        let good = IntentExample(text: "x and y", intents: Array(domains[0].intents.prefix(2)), domain: domains[0].name, split: .test)
        let attached = try scenario.attachingMultiIntentTest([good])
        #expect(attached.domains[0].multiIntentTest.count == 1)
        #expect(attached.domains[0].globalLabels(of: good) == [0, 1])
    }

    // MARK: Synthetic corpus

    @Test func syntheticIsDeterministic() {
        let config = SyntheticConfig(domains: 8, intentsPerDomain: 6, trainPerIntent: 10, valPerIntent: 3, testPerIntent: 4,
                                     seed: 5, multiIntentTestPerDomain: 5)
        let a = SyntheticCorpus.make(config: config)
        #expect(a == SyntheticCorpus.make(config: config))
        var other = config
        other.seed = 6
        #expect(a != SyntheticCorpus.make(config: other))
        // Domain k does not depend on how many domains are made.
        var fewer = config
        fewer.domains = 3
        #expect(Array(a.prefix(3)) == SyntheticCorpus.make(config: fewer))
    }

    @Test func syntheticLabelsAndConfusableIntents() throws {
        let domains = SyntheticCorpus.make(config: SyntheticConfig(domains: 12, intentsPerDomain: 6, trainPerIntent: 8,
                                                                   valPerIntent: 2, testPerIntent: 3, seed: 1,
                                                                   multiIntentTestPerDomain: 4))
        var owner: [String: String] = [:]
        var kindDomains: [String: Int] = [:]
        for d in domains {
            #expect(d.intents.count == 6)
            #expect(d.train.count == 48 && d.val.count == 12 && d.test.count == 18)
            for intent in d.intents {
                #expect(intent.hasPrefix(d.name + "."))
                #expect(owner.updateValue(d.name, forKey: intent) == nil, "label \(intent) in two domains")
                kindDomains[String(intent.dropFirst(d.name.count + 1)), default: 0] += 1
            }
            for ex in d.train + d.val + d.test + d.multiIntentTest {
                #expect(ex.domain == d.name && !ex.text.contains("{") && !ex.text.isEmpty)
                #expect(ex.intents.allSatisfy(d.intents.contains))
            }
            #expect(d.multiIntentTest.count == 4)
            #expect(d.multiIntentTest.allSatisfy { $0.intents.count == 2 && $0.intents[0] != $0.intents[1] && $0.split == .test })
        }
        // Confusable kinds recur: every domain has three of the five, so some kind is in most domains.
        let confusable = SyntheticCorpus.confusableIntents.map { kindDomains[$0] ?? 0 }
        #expect(confusable.reduce(0, +) >= 3 * 12)
        #expect(confusable.filter { $0 >= 4 }.count >= 3)
        // The whole scenario loads.
        let scenario = try Scenario(domains: domains)
        #expect(scenario.numClasses == 72)
    }

    @Test func syntheticUtterancesNameTheirBrand() {
        // Intent kinds recur across domains, so the brand is what makes an utterance attributable.
        for kind in SyntheticCorpus.intentKinds {
            for template in kind.templates {
                #expect(template.contains("{brand}") || template.contains("{product}"), "\(kind.name): \(template)")
            }
        }
        let domains = SyntheticCorpus.make(config: SyntheticConfig(domains: 5, trainPerIntent: 20, seed: 4, typoRate: 0))
        for d in domains {
            let brand = String(d.name.split(separator: "_")[0])
            #expect(d.train.allSatisfy { $0.text.lowercased().contains(brand) })
        }
    }

    @Test func syntheticHeadTailSkew() {
        let domains = SyntheticCorpus.make(config: SyntheticConfig(domains: 6, intentsPerDomain: 5, trainPerIntent: 60,
                                                                   valPerIntent: 4, testPerIntent: 6, seed: 2, headTailSkew: 1))
        let train = domains.map(\.train.count)
        #expect(train == [300, 150, 100, 75, 60, 50])
        #expect(domains.allSatisfy { $0.val.count == 20 && $0.test.count == 30 })
        #expect(train.first! >= 5 * train.last!)
    }

    /// Production-like traffic: a few large head domains, a floored long tail, intent counts that
    /// vary by domain; the defaults keep the old corpus exactly.
    @Test func syntheticProductionTraffic() throws {
        let base = SyntheticConfig(domains: 8, intentsPerDomain: 5, trainPerIntent: 40, valPerIntent: 2, testPerIntent: 3, seed: 2, headTailSkew: 1)
        var traffic = base
        traffic.headDomains = 3
        traffic.minTrainPerIntent = 8
        #expect((0..<8).map { base.trainPerIntent(domain: $0) } == [40, 20, 13, 10, 8, 7, 6, 5])
        #expect((0..<8).map { traffic.trainPerIntent(domain: $0) } == [40, 40, 40, 20, 13, 10, 8, 8])
        var varied = base
        varied.intentsPerDomainMin = 2
        varied.intentsPerDomain = 9
        let counts = SyntheticCorpus.make(config: varied).map(\.intents.count)
        #expect(counts.allSatisfy { (2...9).contains($0) } && Set(counts).count >= 3, "\(counts)")
        #expect((0..<8).map { varied.intentCount(domain: $0) } == counts)
        // without the new keys, the corpus and the resolved form are the old ones
        var explicit = base
        explicit.headDomains = 1
        explicit.minTrainPerIntent = 1
        explicit.intentsPerDomainMin = nil
        #expect(SyntheticCorpus.make(config: explicit).map(\.train) == SyntheticCorpus.make(config: base).map(\.train))
        let keys = try JSONSerialization.jsonObject(with: JSONEncoder().encode(base)) as! [String: Any]
        #expect(keys["headDomains"] == nil && keys["minTrainPerIntent"] == nil && keys["intentsPerDomainMin"] == nil)
        let encoded = try JSONSerialization.jsonObject(with: JSONEncoder().encode(traffic)) as! [String: Any]
        #expect(encoded["headDomains"] as? Int == 3 && encoded["minTrainPerIntent"] as? Int == 8)
        #expect(try JSONDecoder().decode(SyntheticConfig.self, from: JSONEncoder().encode(varied)) == varied)
    }

    @Test func syntheticScalesToManyDomains() {
        let config = SyntheticConfig(domains: 60, intentsPerDomain: 4, trainPerIntent: 2, valPerIntent: 1, testPerIntent: 1, seed: 3)
        let domains = SyntheticCorpus.make(config: config)
        #expect(domains.count == 60)
        #expect(Set(domains.map(\.name)).count == 60)
        let brands = Set(domains.map { $0.name.split(separator: "_")[0] })
        #expect(brands.count == 60)
        // Texts are mostly distinct inside a domain and look like English words.
        for d in domains {
            let texts = d.train.map(\.text) + d.test.map(\.text)
            #expect(Set(texts).count >= texts.count - 1)
        }
        let sample = domains[0].train[0].text
        #expect(sample.split(separator: " ").count >= 4)
        // Clamped when more intents are asked for than a product admits.
        let clamped = SyntheticCorpus.make(config: SyntheticConfig(domains: 2, intentsPerDomain: 100, trainPerIntent: 1,
                                                                   valPerIntent: 1, testPerIntent: 1))
        #expect(clamped.allSatisfy { $0.intents.count >= 14 && $0.intents.count < 100 })
        #expect(SyntheticCorpus.generalText(count: 5, seed: 1) == SyntheticCorpus.generalText(count: 5, seed: 1))
    }

    // MARK: Real data (../shared/data)

    @Test func realCLINC150() throws {
        let url = try TestPaths.require(TestPaths.data.appendingPathComponent("clinc150/clinc150.jsonl"))
        let dataset = try IntentDataset.load(jsonl: url)
        #expect(dataset.domains.count == 10)
        #expect(!dataset.domains.contains { $0.name == "oos" })
        #expect(dataset.report.excludedRows == 1200)
        for d in dataset.domains {
            #expect(d.intents.count == 15)
            #expect(d.train.count == 1500 && d.val.count == 300 && d.test.count == 450)
            var perIntent: [String: Int] = [:]
            for ex in d.train { perIntent[ex.intent, default: 0] += 1 }
            #expect(perIntent.values.allSatisfy { $0 == 100 })
        }
        let quick = try IntentDataset.load(jsonl: url, options: LoadOptions(maxExamplesPerSplit: 45))
        #expect(quick.domains.allSatisfy { $0.train.count == 45 && $0.intents.count == 15 })
    }

    @Test func realBANKING77() throws {
        let url = try TestPaths.require(TestPaths.data.appendingPathComponent("banking77/banking77.jsonl"))
        let dataset = try IntentDataset.load(jsonl: url)
        #expect(dataset.domains.map(\.name) == ["banking"])
        let d = dataset.domains[0]
        #expect(d.intents.count == 77)
        #expect(d.train.count == 9038 && d.val.count == 965 && d.test.count == 3080)
    }

    /// `data.multiIntentFiles`: multi-intent test rows join the domain they name; rows with an
    /// intent the domain does not train on are rejected naming the file, or dropped on request.
    @Test func multiIntentFilesAttachToTheirDomain() throws {
        let data = try write(validLines(), name: "single.jsonl")
        let multi = try write([multiRow("alpha open and close", ["alpha_open", "alpha_close"], "alpha", "test"),
                               multiRow("alpha open it and beta", ["alpha_open", "alpha_gone"], "alpha", "test"),
                               multiRow("alpha val row", ["alpha_open", "alpha_close"], "alpha", "val"),
                               row("alpha just open", "alpha_open", "alpha", "test")], name: "multi.jsonl")
        var file = DataFileConfig(path: multi.path)
        var cfg = DataConfig(files: [DataFileConfig(path: data.path)], general: nil)
        cfg.multiIntentFiles = [file]
        do {
            _ = try ExperimentSetup.scenario(cfg)
            Issue.record("an unknown intent was accepted")
        } catch {
            #expect(error.localizedDescription.contains(multi.path) && error.localizedDescription.contains("alpha_gone"), "\(error)")
        }
        file.unknownLabels = .drop
        cfg.multiIntentFiles = [file]
        let (scenario, _) = try ExperimentSetup.scenario(cfg)
        let alpha = scenario.domains[scenario.index(ofDomain: "alpha")!]
        // only the test row with several known intents: not the val row, the single-intent row or the unknown one
        #expect(alpha.multiIntentTest.map(\.text) == ["alpha open and close"])
        #expect(scenario.domains[scenario.index(ofDomain: "beta")!].multiIntentTest.isEmpty)
    }

    @Test func realChainedFifteenDomains() throws {
        let root = TestPaths.data
        let clinc = try IntentDataset.load(jsonl: TestPaths.require(root.appendingPathComponent("clinc150/clinc150.jsonl")))
        let banking = try IntentDataset.load(jsonl: TestPaths.require(root.appendingPathComponent("banking77/banking77.jsonl")),
                                             options: LoadOptions(domainPrefix: "banking77"))
        let snips = try IntentDataset.load(jsonl: TestPaths.require(root.appendingPathComponent("snips/snips.jsonl")))
        let atis = try IntentDataset.load(jsonl: TestPaths.require(root.appendingPathComponent("atis/atis.jsonl")),
                                          options: LoadOptions(multiLabel: .separate, unknownLabels: .drop))
        let nlupp = try IntentDataset.load(jsonl: TestPaths.require(root.appendingPathComponent("nlupp/nlupp.jsonl")),
                                           options: LoadOptions(domainPrefix: "nlupp", multiLabel: .keep, allowSharedLabels: true))
        #expect(nlupp.report.droppedNoIntent == 362)
        #expect(atis.report.droppedUnknownLabel >= 1)
        #expect(atis.domains[0].multiIntentTest.allSatisfy { $0.isMultiIntent })

        let scenario = try Scenario(datasets: [clinc, banking, snips, atis, nlupp])
        #expect(scenario.count == 15)
        #expect(scenario.domainNames.suffix(5) == ["banking77/banking", "snips", "atis", "nlupp/banking", "nlupp/hotels"])
        #expect(scenario.numClasses == 150 + 77 + 7 + atis.domains[0].intents.count + 48 + 40)
        var offset: Int32 = 0
        for d in scenario.domains {
            #expect(d.labelOffset == offset)
            offset += Int32(d.classCount)
        }
        // Without a prefix, CLINC's and BANKING77's "banking" collide.
        let plain = try IntentDataset.load(jsonl: root.appendingPathComponent("banking77/banking77.jsonl"))
        #expect(throws: ScenarioError.duplicateDomain("banking")) { try Scenario(datasets: [clinc, plain]) }

        // MixATIS test rows attach to the ATIS domain.
        let mix = try IntentDataset.loadMultiIntentTest(
            jsonl: TestPaths.require(root.appendingPathComponent("multi_intent/mixatis_clean.jsonl")))
        #expect(!mix.isEmpty && mix.allSatisfy { $0.isMultiIntent && $0.split == .test && $0.domain == "atis" })
        let known = Set(atis.domains[0].intents)
        let attachable = mix.filter { $0.intents.allSatisfy(known.contains) }
        // Only atis_day_name is missing from ATIS train (it occurs in ATIS/MixATIS test only).
        #expect(mix.filter { !$0.intents.allSatisfy(known.contains) }.allSatisfy { $0.intents.contains("atis_day_name") })
        #expect(attachable.count >= mix.count * 8 / 10)
        let withMix = try scenario.attachingMultiIntentTest(attachable)
        let atisIndex = try #require(withMix.index(ofDomain: "atis"))
        #expect(withMix.domains[atisIndex].multiIntentTest.count == scenario.domains[atisIndex].multiIntentTest.count + attachable.count)
    }
}
