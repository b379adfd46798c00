// ref2026: a small CLI over the January-2026 BitNet.cpp llama.cpp fork (crates.io bitnet-llm-sys
// 1.0.2, bitnet.cpp/3rdparty/llama.cpp), built as a standalone executable because its ggml_* /
// llama_* symbols clash with the 0.0.5 reference linked into bitnet-crossval.
//
//   ref2026 logits MODEL.gguf --tokens 1,2,3 --out FILE [--threads N] [--mode seq|batch]
//       Teacher-forced logits of every position, from an empty KV cache.
//       seq: one token per llama_decode; batch: all tokens in one llama_decode, logits for all.
//       FILE: int32 n_tokens, int32 n_vocab, then n_tokens*n_vocab float32, row-major (LE).
//   ref2026 bench MODEL.gguf [-p 128] [-n 32] [-t N] [-r 3] [--tokens LIST] [--after-prompt]
//       llama-bench style: a warm-up, then r repetitions of prompt processing (p tokens as one
//       batch, logits of the last only) and of generation (n tokens one at a time from an empty
//       cache, or with --after-prompt after the prompt, as `bitnet bench` times it); tokens are
//       random unless --tokens lists p + n ids; prints medians and every run as JSON on stdout.
//   ref2026 info MODEL.gguf        architecture, vocabulary size, a few metadata keys.
//   ref2026 matmul --rows R --cols C --n N --weights W.bin --x X.bin --out Y.bin [-t T] [-r K]
//       ggml_mul_mat of an I2_S matrix (W.bin: R*C/4 packed bytes + 32-byte scale trailer, the
//       GGUF tensor's bytes) by N f32 columns (X.bin, N*C floats): computed K times, Y.bin gets
//       the R*N outputs (column-major by token, as ggml), stdout the seconds of every call as JSON.
//   ref2026 tokenize MODEL.gguf --text-file FILE [--no-bos] [--special]
//       The vocabulary's token ids for the file's bytes (BOS added unless --no-bos; special
//       tokens in the text parsed only with --special), comma-separated on stdout.
// The process re-executes itself once with a 1 GiB stack limit (see ensure_big_stack).
// llama.cpp's log goes to stderr only with REF2026_VERBOSE=1 (errors are always shown).

#include "ggml.h"
#include "llama.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

namespace {

bool g_verbose = false;

void log_cb(enum ggml_log_level level, const char* text, void*) {
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

[[noreturn]] void die(const std::string& msg) {
    fprintf(stderr, "ref2026: %s\n", msg.c_str());
    exit(1);
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Engine {
    llama_model* model = nullptr;
    llama_context* ctx = nullptr;
    int n_vocab = 0;

    Engine(const char* path, int n_ctx, int n_batch, int n_threads) {
        llama_model_params mp = llama_model_default_params();
        mp.n_gpu_layers = 0;
        model = llama_load_model_from_file(path, mp);
        if (!model) die(std::string("cannot load model ") + path);
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = (uint32_t)n_ctx;
        cp.n_batch = (uint32_t)n_batch;
        cp.n_ubatch = (uint32_t)std::min(n_batch, 512);  // the reference's default micro-batch
        cp.n_threads = n_threads;
        cp.n_threads_batch = n_threads;
        cp.no_perf = true;
        ctx = llama_new_context_with_model(model, cp);
        if (!ctx) die("llama_new_context_with_model failed");
        n_vocab = llama_n_vocab(model);
    }
    ~Engine() {
        llama_free(ctx);
        llama_free_model(model);
    }

    // Decodes tokens[0..n) at positions pos0.. in chunks of `step`; if out != null, copies the
    // logits of every token (last_only: of the last token only) into out.
    void decode(const int32_t* tokens, int n, int pos0, int step, bool last_only, float* out) {
        llama_batch b = llama_batch_init(step, 0, 1);
        for (int start = 0; start < n; start += step) {
            const int cnt = std::min(step, n - start);
            b.n_tokens = cnt;
            for (int i = 0; i < cnt; i++) {
                b.token[i] = tokens[start + i];
                b.pos[i] = pos0 + start + i;
                b.n_seq_id[i] = 1;
                b.seq_id[i][0] = 0;
                b.logits[i] = (!last_only || start + i == n - 1) ? 1 : 0;
            }
            if (llama_decode(ctx, b) != 0) die("llama_decode failed");
            if (out) {
                for (int i = 0; i < cnt; i++) {
                    if (last_only && start + i != n - 1) continue;
                    const float* l = llama_get_logits_ith(ctx, i);
                    if (!l) die("no logits");
                    const size_t row = last_only ? 0 : (size_t)(start + i);
                    memcpy(out + row * n_vocab, l, sizeof(float) * n_vocab);
                }
            }
        }
        llama_batch_free(b);
    }
};

std::vector<int32_t> parse_tokens(const std::string& s) {
    std::vector<int32_t> v;
    size_t i = 0;
    while (i < s.size()) {
        size_t j = s.find(',', i);
        if (j == std::string::npos) j = s.size();
        if (j > i) v.push_back((int32_t)strtol(s.substr(i, j - i).c_str(), nullptr, 10));
        i = j + 1;
    }
    return v;
}

int default_threads() {
    const char* e = getenv("REF2026_THREADS");
    return e ? atoi(e) : 1;
}

int cmd_logits(int argc, char** argv) {
    if (argc < 3) die("usage: ref2026 logits MODEL.gguf --tokens 1,2,3 --out FILE [--threads N] [--mode seq|batch]");
    const char* path = argv[2];
    std::vector<int32_t> toks;
    std::string out_path, mode = "seq";
    int threads = default_threads();
    for (int i = 3; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) die("missing value for " + a);
            return argv[++i];
        };
        if (a == "--tokens") toks = parse_tokens(next());
        else if (a == "--out" || a == "-o") out_path = next();
        else if (a == "--threads" || a == "-t") threads = atoi(next().c_str());
        else if (a == "--mode") mode = next();
        else die("unknown argument " + a);
    }
    if (toks.empty() || out_path.empty()) die("--tokens and --out are required");
    if (mode != "seq" && mode != "batch") die("--mode must be seq or batch");
    const int n = (int)toks.size();
    Engine e(path, std::max(n, 8), std::max(n, 8), threads);
    for (int32_t t : toks)
        if (t < 0 || t >= e.n_vocab) die("token id out of range: " + std::to_string(t));
    std::vector<float> logits((size_t)n * e.n_vocab);
    llama_kv_cache_clear(e.ctx);
    const double t0 = now_s();
    e.decode(toks.data(), n, 0, mode == "batch" ? n : 1, false, logits.data());
    const double dt = now_s() - t0;
    FILE* f = fopen(out_path.c_str(), "wb");
    if (!f) die("cannot write " + out_path);
    int32_t hdr[2] = {n, e.n_vocab};
    fwrite(hdr, sizeof hdr, 1, f);
    fwrite(logits.data(), sizeof(float), logits.size(), f);
    fclose(f);
    fprintf(stderr, "ref2026: %d tokens (%s, %d threads), n_vocab %d, %.3f s -> %s\n", n,
            mode.c_str(), threads, e.n_vocab, dt, out_path.c_str());
    return 0;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t k = v.size();
    return k % 2 ? v[k / 2] : 0.5 * (v[k / 2 - 1] + v[k / 2]);
}

int cmd_bench(int argc, char** argv) {
    if (argc < 3)
        die("usage: ref2026 bench MODEL.gguf [-p 128] [-n 32] [-t N] [-r 3] [--tokens LIST] [--after-prompt]");
    const char* path = argv[2];
    int p = 128, n = 32, threads = default_threads(), reps = 3;
    bool after_prompt = false;
    std::vector<int32_t> given;
    for (int i = 3; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--after-prompt") {
            after_prompt = true;
            continue;
        }
        if (i + 1 >= argc) die("missing value for " + a);
        if (a == "--tokens") {
            given = parse_tokens(argv[++i]);
            continue;
        }
        const int v = atoi(argv[++i]);
        if (a == "-p") p = v;
        else if (a == "-n") n = v;
        else if (a == "-t" || a == "--threads") threads = v;
        else if (a == "-r") reps = v;
        else die("unknown argument " + a);
    }
    if (p < 0 || n < 0 || reps < 1 || threads < 1) die("bad arguments");
    if (!given.empty() && (int)given.size() != p + n) die("--tokens must list p + n token ids");
    if (after_prompt && p < 1) die("--after-prompt needs a prompt");
    const int n_ctx = std::max(after_prompt ? p + n : std::max(p, n), 8);
    Engine e(path, n_ctx, std::max(p, 8), threads);
    std::vector<int32_t> prompt(std::max(p, 1)), gen(std::max(n, 1));
    if (given.empty()) {
        std::mt19937 rng(42);
        std::uniform_int_distribution<int> dist(0, e.n_vocab - 1);
        for (auto& t : prompt) t = dist(rng);
        for (auto& t : gen) t = dist(rng);
    } else {
        std::copy(given.begin(), given.begin() + p, prompt.begin());
        std::copy(given.begin() + p, given.end(), gen.begin());
    }
    for (int32_t t : given)
        if (t < 0 || t >= e.n_vocab) die("token id out of range: " + std::to_string(t));
    std::vector<float> last(e.n_vocab);
    // Generation starts at position p after the prompt (as `bitnet bench` times it), or from an
    // empty cache (as llama-bench does).
    const int g0 = after_prompt ? p : 0;

    // warm-up (as llama-bench: one prompt batch and one generated token)
    llama_kv_cache_clear(e.ctx);
    if (p > 0) e.decode(prompt.data(), p, 0, p, true, last.data());
    if (!after_prompt) llama_kv_cache_clear(e.ctx);
    if (n > 0) e.decode(gen.data(), 1, g0, 1, true, last.data());

    std::vector<double> pp, tg;
    for (int r = 0; r < reps; r++) {
        if (p > 0) {
            llama_kv_cache_clear(e.ctx);
            const double t0 = now_s();
            e.decode(prompt.data(), p, 0, p, true, last.data());
            pp.push_back(p / (now_s() - t0));
        }
        if (n > 0) {
            if (!after_prompt) llama_kv_cache_clear(e.ctx);
            const double t0 = now_s();
            for (int i = 0; i < n; i++) e.decode(&gen[i], 1, g0 + i, 1, true, last.data());
            tg.push_back(n / (now_s() - t0));
        }
    }
    auto arr = [](const std::vector<double>& v) {
        std::string s = "[";
        for (size_t i = 0; i < v.size(); i++) s += (i ? "," : "") + std::to_string(v[i]);
        return s + "]";
    };
    printf("{\"engine\":\"bitnet.cpp-2026 (bitnet-llm-sys 1.0.2)\",\"model\":\"%s\",\"threads\":%d,"
           "\"n_prompt\":%d,\"n_gen\":%d,\"reps\":%d,\"after_prompt\":%s,\"prefill_tps\":%.3f,"
           "\"gen_tps\":%.3f,\"prefill_runs\":%s,\"gen_runs\":%s}\n",
           path, threads, p, n, reps, after_prompt ? "true" : "false",
           pp.empty() ? 0.0 : median(pp), tg.empty() ? 0.0 : median(tg), arr(pp).c_str(),
           arr(tg).c_str());
    return 0;
}

int cmd_info(int argc, char** argv) {
    if (argc < 3) die("usage: ref2026 info MODEL.gguf");
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model* m = llama_load_model_from_file(argv[2], mp);
    if (!m) die("cannot load");
    char buf[256];
    const char* keys[] = {"general.architecture", "general.file_type", "tokenizer.ggml.model",
                          "tokenizer.ggml.pre"};
    for (const char* k : keys) {
        if (llama_model_meta_val_str(m, k, buf, sizeof buf) >= 0) printf("%s = %s\n", k, buf);
    }
    printf("n_vocab = %d\n", llama_n_vocab(m));
    llama_free_model(m);
    return 0;
}

std::vector<char> read_file(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) die("cannot read " + path);
    std::vector<char> v;
    char buf[1 << 16];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) v.insert(v.end(), buf, buf + got);
    fclose(f);
    return v;
}

int cmd_matmul(int argc, char** argv) {
    long rows = 0, cols = 0, n = 0, threads = default_threads(), reps = 1;
    std::string w_path, x_path, out_path;
    for (int i = 2; i < argc; i++) {
        std::string a = argv[i];
        if (i + 1 >= argc) die("missing value for " + a);
        std::string v = argv[++i];
        if (a == "--rows") rows = atol(v.c_str());
        else if (a == "--cols") cols = atol(v.c_str());
        else if (a == "--n") n = atol(v.c_str());
        else if (a == "-t" || a == "--threads") threads = atol(v.c_str());
        else if (a == "-r") reps = atol(v.c_str());
        else if (a == "--weights") w_path = v;
        else if (a == "--x") x_path = v;
        else if (a == "--out") out_path = v;
        else die("unknown argument " + a);
    }
    if (rows <= 0 || cols <= 0 || cols % 128 != 0 || n <= 0 || threads <= 0 || reps <= 0 ||
        rows > (1 << 20) || cols > (1 << 20) || n > 4096 || w_path.empty() || x_path.empty() ||
        out_path.empty())
        die("bad matmul arguments");
    const size_t w_bytes = (size_t)rows * cols / 4 + 32;
    std::vector<char> w_data = read_file(w_path), x_data = read_file(x_path);
    if (w_data.size() != w_bytes) die("weights file size is not rows*cols/4 + 32");
    if (x_data.size() != sizeof(float) * (size_t)cols * n) die("x file size is not n*cols floats");
    // ggml sizes an I2_S tensor's allocation as rows*cols bytes; room for the work buffer too.
    const size_t mem = (size_t)rows * cols + (size_t)cols * n * 8 + (size_t)rows * n * 4 +
                       8 * ggml_tensor_overhead() + ggml_graph_overhead() + (16 << 20);
    ggml_init_params ip = {mem, nullptr, false};
    ggml_context* ctx = ggml_init(ip);
    if (!ctx) die("ggml_init failed");
    ggml_tensor* w = ggml_new_tensor_2d(ctx, GGML_TYPE_I2_S, cols, rows);
    ggml_tensor* xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cols, n);
    if (!w || !xt || ggml_nbytes(w) < w_bytes) die("tensor allocation failed");
    memcpy(w->data, w_data.data(), w_bytes);
    memcpy(xt->data, x_data.data(), x_data.size());
    ggml_tensor* y = ggml_mul_mat(ctx, w, xt);
    ggml_cgraph* gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    std::string secs = "[";
    for (long r = 0; r < reps; r++) {
        const double t0 = now_s();
        if (ggml_graph_compute_with_ctx(ctx, gf, (int)threads) != GGML_STATUS_SUCCESS)
            die("ggml_graph_compute failed");
        char b[32];
        snprintf(b, sizeof b, "%s%.9g", r ? "," : "", now_s() - t0);
        secs += b;
    }
    FILE* f = fopen(out_path.c_str(), "wb");
    if (!f) die("cannot write " + out_path);
    fwrite(y->data, sizeof(float), (size_t)rows * n, f);
    fclose(f);
    printf("{\"rows\":%ld,\"cols\":%ld,\"n\":%ld,\"threads\":%ld,\"seconds\":%s]}\n", rows, cols,
           n, threads, secs.c_str());
    ggml_free(ctx);
    return 0;
}

int cmd_tokenize(int argc, char** argv) {
    if (argc < 3) die("usage: ref2026 tokenize MODEL.gguf --text-file FILE [--no-bos] [--special]");
    std::string text_path;
    bool add_bos = true, special = false;
    for (int i = 3; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--text-file" && i + 1 < argc) text_path = argv[++i];
        else if (a == "--no-bos") add_bos = false;
        else if (a == "--special") special = true;
        else die("unknown argument " + a);
    }
    if (text_path.empty()) die("--text-file is required");
    FILE* f = fopen(text_path.c_str(), "rb");
    if (!f) die("cannot read " + text_path);
    std::string text;
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, got);
    fclose(f);
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model* m = llama_load_model_from_file(argv[2], mp);
    if (!m) die(std::string("cannot load model ") + argv[2]);
    std::vector<llama_token> ids(text.size() + 8);
    int n = llama_tokenize(m, text.data(), (int32_t)text.size(), ids.data(), (int32_t)ids.size(),
                           add_bos, special);
    if (n < 0) {
        ids.resize((size_t)-n);
        n = llama_tokenize(m, text.data(), (int32_t)text.size(), ids.data(), (int32_t)ids.size(),
                           add_bos, special);
    }
    if (n < 0) die("llama_tokenize failed");
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    printf("\n");
    llama_free_model(m);
    return 0;
}

}  // namespace

// The fork's I2_S mul_mat keeps a float VLA of (rows per thread) x (batch rounded down to 4) on
// the stack (ggml.c, ggml_compute_forward_mul_mat, gemm path): 4096 rows x 512 tokens already
// overflow the default 8 MiB (segfault at pp512 with 1 thread on a 1536/4096 model). Re-exec once
// with a 1 GiB stack limit (main thread and, via glibc's default, ggml's pthreads) and
// OMP_STACKSIZE for OpenMP workers. Virtual reservation only; numerics are unaffected.
void ensure_big_stack(char** argv) {
    if (getenv("REF2026_STACK_DONE")) return;
    setenv("REF2026_STACK_DONE", "1", 1);
    const rlim_t want = (rlim_t)1 << 30;
    struct rlimit rl;
    if (getrlimit(RLIMIT_STACK, &rl) != 0) return;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur >= want) return;
    if (rl.rlim_cur == RLIM_INFINITY) return;
    rl.rlim_cur = (rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want) ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_STACK, &rl) != 0) return;
    if (!getenv("OMP_STACKSIZE")) setenv("OMP_STACKSIZE", "1G", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: carry on with the small stack
}

int main(int argc, char** argv) {
    ensure_big_stack(argv);
    g_verbose = getenv("REF2026_VERBOSE") && atoi(getenv("REF2026_VERBOSE")) != 0;
    llama_log_set(log_cb, nullptr);
    llama_backend_init();
    if (argc < 2) die("usage: ref2026 {logits|bench|info|tokenize|matmul} ...");
    const std::string cmd = argv[1];
    int rc;
    if (cmd == "logits") rc = cmd_logits(argc, argv);
    else if (cmd == "bench") rc = cmd_bench(argc, argv);
    else if (cmd == "info") rc = cmd_info(argc, argv);
    else if (cmd == "tokenize") rc = cmd_tokenize(argc, argv);
    else if (cmd == "matmul") rc = cmd_matmul(argc, argv);
    else die("unknown command " + cmd);
    llama_backend_free();
    return rc;
}
