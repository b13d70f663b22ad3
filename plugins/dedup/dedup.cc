// dedup.Dedup: exact (content hash) and near-duplicate (MinHash-LSH) removal over a stream of
// documents, the first-seen document of each cluster kept. A persistent index carries the state
// from one run to the next, so new data is deduplicated against old.
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <unordered_map>

#include "minhash.h"
#include "weir/atomic_file.h"
#include "weir/json.h"
#include "weir/plugin.h"

namespace weir::dedup {
namespace {

constexpr char kMagic[8] = {'W', 'E', 'I', 'R', 'D', 'D', 'U', 'P'};
constexpr uint32_t kIndexVersion = 1;

// One document's id as written in its id column (a number or a string).
struct Id {
  std::string text;
  double number = 0;
};

struct Params {
  int ngram, bands, rows;
  uint64_t seed;
  bool operator==(const Params&) const = default;
};

// The deduplication state of one scope (the whole stream, or one shard).
struct Scope {
  std::vector<Id> ids;      // every document seen, in order
  std::vector<int> parent;  // union-find over documents; a root is its cluster's first doc
  std::unordered_map<std::string, int> exact;              // 128-bit content hash -> first document
  std::vector<std::unordered_map<uint64_t, int>> buckets;  // per band: key -> first document

  int Find(int d) {
    while (parent[static_cast<size_t>(d)] != d) {
      int up = parent[static_cast<size_t>(parent[static_cast<size_t>(d)])];
      parent[static_cast<size_t>(d)] = up;  // path halving
      d = up;
    }
    return d;
  }
  // Joins two clusters; the earlier root stays the root.
  void Union(int a, int b) {
    a = Find(a);
    b = Find(b);
    if (a != b) parent[static_cast<size_t>(std::max(a, b))] = std::min(a, b);
  }
};

// Index file: magic, version, params, then per scope its name and state. Little-endian, as
// written by this machine; the params must match the reading op's.
template <typename T>
void Put(std::ostream& out, const T& v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof(T));
}
void PutString(std::ostream& out, const std::string& s) {
  Put<uint64_t>(out, s.size());
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}
template <typename T>
bool Get(std::istream& in, T& v) {
  return static_cast<bool>(in.read(reinterpret_cast<char*>(&v), sizeof(T)));
}
bool GetString(std::istream& in, std::string& s) {
  uint64_t n;
  if (!Get(in, n) || n > (1ull << 32)) return false;
  s.resize(n);
  return static_cast<bool>(in.read(s.data(), static_cast<std::streamsize>(n)));
}

class Dedup : public StreamKernel {
 public:
  explicit Dedup(const NodeContext& ctx)
      : ctx_(ctx),
        text_(ctx.String("text_column")),
        id_(ctx.String("id_column")),
        shard_(ctx.String("shard_column")),
        exact_(ctx.Bool("exact")),
        near_(ctx.Bool("near")),
        params_{static_cast<int>(ctx.Int("ngram")), static_cast<int>(ctx.Int("bands")),
                static_cast<int>(ctx.Int("rows")), static_cast<uint64_t>(ctx.Int("seed"))},
        salts_(Salts(params_.bands * params_.rows, params_.seed)) {}

  Status Load() {
    const std::string& path = ctx_.String("load_index");
    if (path.empty()) return Status();
    std::filesystem::path file = ctx_.InputPath(path);
    std::ifstream in(file, std::ios::binary);
    if (!in) return ctx_.Error("cannot read the dedup index " + file.string());
    auto bad = [&](const std::string& why) {
      return ctx_.Error("dedup index " + file.string() + ": " + why);
    };
    char magic[8];
    uint32_t version;
    Params saved{};
    if (!in.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0)
      return bad("not a weir dedup index");
    if (!Get(in, version) || version != kIndexVersion)
      return bad("index version " + std::to_string(version) + ", this weir reads " +
                 std::to_string(kIndexVersion));
    if (!Get(in, saved.ngram) || !Get(in, saved.bands) || !Get(in, saved.rows) ||
        !Get(in, saved.seed))
      return bad("truncated header");
    if (!(saved == params_)) {
      return bad("built with ngram=" + std::to_string(saved.ngram) +
                 " bands=" + std::to_string(saved.bands) + " rows=" + std::to_string(saved.rows) +
                 " seed=" + std::to_string(saved.seed) + "; this node uses ngram=" +
                 std::to_string(params_.ngram) + " bands=" + std::to_string(params_.bands) +
                 " rows=" + std::to_string(params_.rows) + " seed=" + std::to_string(params_.seed));
    }
    uint64_t scopes;
    if (!Get(in, scopes)) return bad("truncated");
    for (uint64_t s = 0; s < scopes; ++s) {
      std::string name;
      uint64_t docs, exact;
      if (!GetString(in, name) || !Get(in, docs)) return bad("truncated");
      Scope& scope = NewScope(name);
      for (uint64_t d = 0; d < docs; ++d) {
        Id id;
        int parent;
        if (!GetString(in, id.text) || !Get(in, id.number) || !Get(in, parent) || parent < 0 ||
            static_cast<uint64_t>(parent) > d)
          return bad("truncated or damaged document table");
        scope.ids.push_back(std::move(id));
        scope.parent.push_back(parent);
      }
      if (!Get(in, exact)) return bad("truncated");
      for (uint64_t e = 0; e < exact; ++e) {
        std::string key;
        int doc;
        if (!GetString(in, key) || !Get(in, doc)) return bad("truncated exact table");
        scope.exact[key] = doc;
      }
      for (auto& band : scope.buckets) {
        uint64_t entries;
        if (!Get(in, entries)) return bad("truncated bucket table");
        for (uint64_t e = 0; e < entries; ++e) {
          uint64_t key;
          int doc;
          if (!Get(in, key) || !Get(in, doc)) return bad("truncated bucket table");
          band[key] = doc;
        }
      }
      loaded_docs_ += docs;
    }
    return Status();
  }

  Status Process(int, const Batch& batch, Emitter& out) override {
    WEIR_ASSIGN_OR_RETURN(const StringColumn* texts, batch.Get<StringColumn>(text_));
    const Column* ids = batch.Find(id_);
    if (ids == nullptr) return ctx_.Error("batch has no id column '" + id_ + "'");
    const StringColumn* shards = nullptr;
    if (!shard_.empty()) {
      WEIR_ASSIGN_OR_RETURN(shards, batch.Get<StringColumn>(shard_));
    }
    std::vector<size_t> kept, removed;
    StringColumn reasons;
    std::vector<Id> duplicate_of;
    // Signatures are pure functions of the text: computed for the whole batch in parallel, then
    // matched against the index in stream order.
    size_t k = salts_.size();
    std::vector<uint64_t> signatures(near_ ? batch.num_rows() * k : 0);
    if (near_) {
      tbb::parallel_for(size_t{0}, batch.num_rows(), [&](size_t row) {
        Signature(WordHashes((*texts)[row]), params_.ngram, salts_, signatures.data() + row * k);
      });
    }
    for (size_t row = 0; row < batch.num_rows(); ++row) {
      Scope& scope = ScopeFor(shards ? (*shards)[row] : std::string());
      const std::string& text = (*texts)[row];
      int doc = static_cast<int>(scope.ids.size());
      scope.ids.push_back(IdOf(*ids, row));
      scope.parent.push_back(doc);
      ++documents_;
      if (exact_) {
        std::string key(16, '\0');
        uint64_t h[2] = {Hash64(text, 1), Hash64(text, 2)};
        std::memcpy(key.data(), h, 16);
        auto [it, fresh] = scope.exact.emplace(key, doc);
        if (!fresh) {
          scope.Union(it->second, doc);
          removed.push_back(row);
          reasons.push_back("exact");
          duplicate_of.push_back(scope.ids[static_cast<size_t>(scope.Find(doc))]);
          ++removed_exact_;
          continue;
        }
      }
      if (near_) {
        const uint64_t* signature = signatures.data() + row * k;
        bool matched = false;
        for (int b = 0; b < params_.bands; ++b) {
          auto [it, fresh] = scope.buckets[static_cast<size_t>(b)].emplace(
              BandKey(signature, b, params_.rows), doc);
          if (!fresh) {
            scope.Union(it->second, doc);
            matched = true;
          }
        }
        if (matched) {
          removed.push_back(row);
          reasons.push_back("near");
          duplicate_of.push_back(scope.ids[static_cast<size_t>(scope.Find(doc))]);
          ++removed_near_;
          continue;
        }
      }
      kept.push_back(row);
    }
    kept_ += kept.size();
    if (!kept.empty()) out.Emit(0, kept.size() == batch.num_rows() ? batch : batch.Select(kept));
    if (!removed.empty()) {
      Batch gone = batch.Select(removed);
      for (const Id& id : duplicate_of) clusters_.insert(id.text);
      WEIR_RETURN_IF_ERROR(gone.Set("reason", std::move(reasons)));
      if (std::holds_alternative<StringColumn>(*ids)) {
        StringColumn of;
        for (const Id& id : duplicate_of) of.push_back(id.text);
        WEIR_RETURN_IF_ERROR(gone.Set("duplicate_of", std::move(of)));
      } else {
        FloatColumn of;
        for (const Id& id : duplicate_of) of.push_back(id.number);
        WEIR_RETURN_IF_ERROR(gone.Set("duplicate_of", std::move(of)));
      }
      out.Emit(1, std::move(gone));
    }
    return Status();
  }

  Status Finish(Emitter&) override {
    ctx_.Metric(0, {{"documents", static_cast<double>(documents_)},
                    {"kept", static_cast<double>(kept_)},
                    {"removed_exact", static_cast<double>(removed_exact_)},
                    {"removed_near", static_cast<double>(removed_near_)}});
    const std::string& stats = ctx_.String("stats");
    if (!stats.empty()) {
      std::string json = "{\"documents\": " + std::to_string(documents_) +
                         ", \"kept\": " + std::to_string(kept_) +
                         ", \"removed\": " + std::to_string(removed_exact_ + removed_near_) +
                         ", \"removed_exact\": " + std::to_string(removed_exact_) +
                         ", \"removed_near\": " + std::to_string(removed_near_) +
                         ", \"duplicate_clusters\": " + std::to_string(clusters_.size()) +
                         ", \"indexed_before\": " + std::to_string(loaded_docs_) +
                         ", \"ngram\": " + std::to_string(params_.ngram) +
                         ", \"bands\": " + std::to_string(params_.bands) +
                         ", \"rows\": " + std::to_string(params_.rows) + "}\n";
      WEIR_RETURN_IF_ERROR(WriteFileAtomically(Out(stats), json));
    }
    WEIR_RETURN_IF_ERROR(SaveClusters());
    return Save();
  }

 private:
  Scope& NewScope(const std::string& name) {
    Scope& scope = scopes_[name];
    scope.buckets.resize(static_cast<size_t>(params_.bands));
    return scope;
  }
  Scope& ScopeFor(const std::string& name) {
    auto it = scopes_.find(name);
    return it != scopes_.end() ? it->second : NewScope(name);
  }

  std::filesystem::path Out(const std::string& path) const {
    return (ctx_.OutputPath(ctx_.String("dir")) / path).lexically_normal();
  }

  static Id IdOf(const Column& column, size_t row) {
    Id id;
    if (const auto* s = std::get_if<StringColumn>(&column)) {
      id.text = (*s)[row];
    } else if (const auto* f = std::get_if<FloatColumn>(&column)) {
      id.number = (*f)[row];
      id.text = ShortestDouble(id.number);
    } else if (const auto* i = std::get_if<IntColumn>(&column)) {
      id.number = static_cast<double>((*i)[row]);
      id.text = std::to_string((*i)[row]);
    }
    return id;
  }

  // Every cluster with more than one document: its kept document and the others, in stream
  // order, one JSON object per line.
  Status SaveClusters() {
    const std::string& path = ctx_.String("clusters");
    if (path.empty()) return Status();
    WEIR_ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Open(Out(path)));
    auto quote = [&](const Id& id) {
      return id.text == ShortestDouble(id.number) ? id.text : JsonQuote(id.text);
    };
    for (auto& [name, scope] : scopes_) {
      std::map<int, std::vector<int>> members;
      for (int d = 0; d < static_cast<int>(scope.ids.size()); ++d)
        members[scope.Find(d)].push_back(d);
      for (const auto& [root, docs] : members) {
        if (docs.size() < 2) continue;
        std::ostream& out = writer->stream();
        out << "{\"kept\": " << quote(scope.ids[static_cast<size_t>(root)]);
        if (!shard_.empty()) out << ", \"shard\": " << JsonQuote(name);
        out << ", \"duplicates\": [";
        for (size_t k = 1; k < docs.size(); ++k)
          out << (k > 1 ? ", " : "") << quote(scope.ids[static_cast<size_t>(docs[k])]);
        out << "]}\n";
      }
    }
    return writer->Commit();
  }

  Status Save() {
    const std::string& path = ctx_.String("save_index");
    if (path.empty()) return Status();
    WEIR_ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Open(Out(path)));
    std::ostream& out = writer->stream();
    out.write(kMagic, 8);
    Put(out, kIndexVersion);
    Put(out, params_.ngram);
    Put(out, params_.bands);
    Put(out, params_.rows);
    Put(out, params_.seed);
    Put<uint64_t>(out, scopes_.size());
    for (const auto& [name, scope] : scopes_) {
      PutString(out, name);
      Put<uint64_t>(out, scope.ids.size());
      for (size_t d = 0; d < scope.ids.size(); ++d) {
        PutString(out, scope.ids[d].text);
        Put(out, scope.ids[d].number);
        Put(out, scope.parent[d]);
      }
      Put<uint64_t>(out, scope.exact.size());
      for (const auto& [key, doc] : scope.exact) {
        PutString(out, key);
        Put(out, doc);
      }
      for (const auto& band : scope.buckets) {
        Put<uint64_t>(out, band.size());
        for (const auto& [key, doc] : band) {
          Put(out, key);
          Put(out, doc);
        }
      }
    }
    return writer->Commit();
  }

  const NodeContext& ctx_;
  std::string text_, id_, shard_;
  bool exact_, near_;
  Params params_;
  std::vector<uint64_t> salts_;
  std::map<std::string, Scope> scopes_;
  uint64_t documents_ = 0, kept_ = 0, removed_exact_ = 0, removed_near_ = 0, loaded_docs_ = 0;
  std::set<std::string> clusters_;
};

void RegisterDedup(Registrar& r) {
  r.StreamOp("dedup.Dedup")
      .Doc(
          "Removes duplicate documents, keeping the first seen of each cluster: exact "
          "duplicates by a 128-bit content hash, near duplicates by MinHash-LSH over word n-gram "
          "shingles (bands x rows; 14 x 8 catches pairs of Jaccard similarity 0.8 with "
          "probability 0.92, 0.7 with 0.56) with union-find clusters. Kept rows leave unchanged "
          "on `kept`; removed rows leave on `removed` with `reason` (exact or near) and "
          "`duplicate_of`, the id of their cluster's first document.")
      .Input("in", "batch", "documents: a text column and an id column")
      .Output("kept", "batch", "documents seen for the first time, unchanged")
      .Output("removed", "batch", "duplicates, with reason and duplicate_of")
      .Attr<std::string>("text_column", "text", "the column compared")
      .Attr<std::string>("id_column", "id", "the column that names documents (number or string)")
      .Attr<std::string>("shard_column", "",
                         "dedup only within equal values of this string column (per-shard "
                         "scope); empty: one global scope")
      .Attr("exact", true, "remove exact duplicates (content hash)")
      .Attr("near", true, "remove near duplicates (MinHash-LSH)")
      .Attr<int64_t>("ngram", 5, "words per shingle", Min(1))
      .Attr<int64_t>("bands", 14, "LSH bands", Min(1))
      .Attr<int64_t>("rows", 8, "signature values per band", Min(1))
      .Attr<int64_t>("seed", 1, "seed of the MinHash permutations (an index records it)")
      .Attr<std::string>("load_index", "",
                         "an index saved by an earlier run (relative to the graph): its "
                         "documents count as seen before this stream")
      .Attr<std::string>("save_index", "",
                         "where to save the index when the stream ends (relative to `dir`), "
                         "written atomically")
      .Attr<std::string>("stats", "", "a JSON summary to write (relative to `dir`)")
      .Attr<std::string>(
          "clusters", "",
          "a JSON Lines file of the duplicate clusters to write (relative to `dir`): "
          "{kept, duplicates: [...]} per cluster of two or more")
      .Attr<std::string>("dir", ".",
                         "folder of `stats` and `save_index`: relative to the run's output "
                         "folder, or absolute")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        auto kernel = std::make_unique<Dedup>(ctx);
        WEIR_RETURN_IF_ERROR(kernel->Load());
        return std::unique_ptr<StreamKernel>(std::move(kernel));
      });
}

}  // namespace
}  // namespace weir::dedup

WEIR_PLUGIN("dedup", "0.1.0", weir::dedup::RegisterDedup)
