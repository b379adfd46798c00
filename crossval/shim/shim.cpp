// C API over the reference (BitNet.cpp's llama.cpp fork) for bitnet-crossval.
//
// Model side: load a GGUF with libllama, tokenize, and evaluate tokens one at a time or as one
// batch, returning the logits of every position. Kernel side: one ggml_mul_mat of an I2_S
// weight by F32 activations, through the same ggml CPU dispatch the model uses.
// llama.cpp's logging is silenced; ERROR-level lines are kept to explain a failed load.

#include "ggml.h"
#include "llama.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

std::once_flag g_init;
std::mutex g_log_mutex;
std::string g_last_error;

void quiet_log(enum ggml_log_level level, const char* text, void*) {
    if (level == GGML_LOG_LEVEL_ERROR && text != nullptr) {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        g_last_error += text;
        if (g_last_error.size() > 4096) {
            g_last_error.erase(0, g_last_error.size() - 4096);
        }
    }
}

void init_once() {
    std::call_once(g_init, [] {
        llama_log_set(quiet_log, nullptr);
        llama_backend_init();
    });
}

void set_err(char* err, size_t err_len, const std::string& msg) {
    if (err != nullptr && err_len > 0) {
        snprintf(err, err_len, "%s", msg.c_str());
    }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

struct bx_model {
    llama_model* model = nullptr;
    llama_context* ctx = nullptr;
    int n_ctx = 0;
    int n_vocab = 0;
    int n_past = 0;  // tokens in the KV cache since the last reset
};

extern "C" {

bx_model* bx_load(const char* path, int n_ctx, int n_threads, char* err, size_t err_len) {
    init_once();
    {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        g_last_error.clear();
    }
    if (n_ctx <= 0 || n_threads <= 0) {
        set_err(err, err_len, "n_ctx and n_threads must be positive");
        return nullptr;
    }
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model* model = llama_load_model_from_file(path, mp);
    if (model == nullptr) {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        set_err(err, err_len, "llama_load_model_from_file failed: " + g_last_error);
        return nullptr;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = (uint32_t)n_ctx;                    // a whole context fits in one llama_decode
    cp.n_ubatch = (uint32_t)(n_ctx < 512 ? n_ctx : 512);  // the reference's default micro-batch
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.no_perf = true;
    llama_context* ctx = llama_new_context_with_model(model, cp);
    if (ctx == nullptr) {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        set_err(err, err_len, "llama_new_context_with_model failed: " + g_last_error);
        llama_free_model(model);
        return nullptr;
    }
    bx_model* m = new bx_model;
    m->model = model;
    m->ctx = ctx;
    m->n_ctx = (int)llama_n_ctx(ctx);
    m->n_vocab = llama_n_vocab(model);
    return m;
}

// Vocabulary only (tokenizer GGUFs without weights): no context, so only the tokenizer
// functions may be used; the evaluation functions report an error or do nothing.
bx_model* bx_load_vocab(const char* path, char* err, size_t err_len) {
    init_once();
    {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        g_last_error.clear();
    }
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only = true;
    llama_model* model = llama_load_model_from_file(path, mp);
    if (model == nullptr) {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        set_err(err, err_len, "llama_load_model_from_file (vocab only) failed: " + g_last_error);
        return nullptr;
    }
    bx_model* m = new bx_model;
    m->model = model;
    m->ctx = nullptr;
    m->n_ctx = 0;
    m->n_vocab = llama_n_vocab(model);
    return m;
}

void bx_free(bx_model* m) {
    if (m == nullptr) return;
    llama_free(m->ctx);
    llama_free_model(m->model);
    delete m;
}

int bx_n_vocab(const bx_model* m) { return m->n_vocab; }

int bx_n_ctx(const bx_model* m) { return m->n_ctx; }

int bx_set_threads(bx_model* m, int n) {
    if (n <= 0 || m->ctx == nullptr) return -1;
    llama_set_n_threads(m->ctx, n, n);
    return 0;
}

// Returns the number of tokens, or -(needed) if cap is too small.
int bx_tokenize(const bx_model* m, const char* text, int add_special, int parse_special,
                int32_t* out, int cap) {
    return llama_tokenize(m->model, text, (int32_t)strlen(text), out, cap, add_special != 0,
                          parse_special != 0);
}

// Returns the number of bytes, or -(needed) if cap is too small.
int bx_detokenize(const bx_model* m, const int32_t* tokens, int n, int remove_special,
                  int unparse_special, char* out, int cap) {
    return llama_detokenize(m->model, tokens, n, out, cap, remove_special != 0,
                            unparse_special != 0);
}

// Empties the KV cache: the next bx_decode starts at position 0.
void bx_reset(bx_model* m) {
    if (m->ctx == nullptr) return;
    llama_kv_cache_clear(m->ctx);
    m->n_past = 0;
}

int bx_n_past(const bx_model* m) { return m->n_past; }

namespace {

// bx_decode and bx_decode_last: with last_only, one batch that asks llama_decode for the last
// token's logits alone (as llama-bench's prompt processing does) and writes n_vocab floats.
int decode(bx_model* m, const int32_t* tokens, int n, int batch, int last_only,
           float* logits_out, double* seconds) {
    if (n <= 0 || tokens == nullptr || logits_out == nullptr || m->ctx == nullptr) return -1;
    if (m->n_past + n > m->n_ctx) return -2;
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= m->n_vocab) return -1;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const int step = batch ? n : 1;
    llama_batch b = llama_batch_init(step, 0, 1);
    for (int start = 0; start < n; start += step) {
        const int cnt = (n - start < step) ? n - start : step;
        b.n_tokens = cnt;
        for (int i = 0; i < cnt; i++) {
            b.token[i] = tokens[start + i];
            b.pos[i] = m->n_past + i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = (!last_only || start + i == n - 1) ? 1 : 0;
        }
        if (llama_decode(m->ctx, b) != 0) {
            llama_batch_free(b);
            return -3;
        }
        for (int i = 0; i < cnt; i++) {
            if (last_only && start + i != n - 1) continue;
            const float* l = llama_get_logits_ith(m->ctx, i);
            if (l == nullptr) {
                llama_batch_free(b);
                return -3;
            }
            const size_t row = last_only ? 0 : (size_t)(start + i);
            memcpy(logits_out + row * m->n_vocab, l, sizeof(float) * m->n_vocab);
        }
        m->n_past += cnt;
    }
    llama_batch_free(b);
    if (seconds != nullptr) *seconds = seconds_since(t0);
    return 0;
}

}  // namespace

// Appends n tokens after the cached ones, one llama_decode per token (batch = 0) or one for all
// (batch = 1), and writes the logits of each of them to logits_out (n * n_vocab floats).
// Returns 0, or a negative code: -1 bad arguments, -2 context full, -3 llama_decode failed.
int bx_decode(bx_model* m, const int32_t* tokens, int n, int batch, float* logits_out,
              double* seconds) {
    return decode(m, tokens, n, batch, 0, logits_out, seconds);
}

// Appends n tokens as one batch and writes only the last token's logits (n_vocab floats):
// prompt processing as llama-bench measures it. Return codes as bx_decode.
int bx_decode_last(bx_model* m, const int32_t* tokens, int n, float* logits_out,
                   double* seconds) {
    return decode(m, tokens, n, 1, 1, logits_out, seconds);
}

// Logits of every position of tokens, from an empty KV cache.
int bx_eval(bx_model* m, const int32_t* tokens, int n, int batch, float* logits_out,
            double* seconds) {
    bx_reset(m);
    return bx_decode(m, tokens, n, batch, logits_out, seconds);
}

// out[t][r] = W[r] . x[t] through ggml_mul_mat with W an I2_S tensor of ne = [cols, rows]
// (w_i2s: rows*cols/4 packed bytes, the f32 scale, padding: rows*cols/4 + 32 bytes) and x an F32
// tensor of ne = [cols, n]. Returns 0, or -1 for bad shapes, -2 if ggml could not allocate,
// -3 if the graph failed.
int bx_i2s_matmul(const uint8_t* w_i2s, int rows, int cols, const float* x, int n, float* out,
                  int n_threads, double* seconds) {
    if (rows <= 0 || cols <= 0 || cols % 128 != 0 || n <= 0 || n_threads <= 0) return -1;
    init_once();
    const size_t w_bytes = (size_t)rows * cols / 4 + 32;
    // ggml sizes the I2_S tensor's allocation as rows*cols bytes (block 1, type size 1); the
    // work buffer holds n*cols int8 + n scales + n sums.
    const size_t mem = (size_t)rows * cols + (size_t)cols * n * 4 + (size_t)rows * n * 4 +
                       (size_t)cols * n + (size_t)n * 8 + 4 * ggml_tensor_overhead() +
                       ggml_graph_overhead() + (1 << 20);
    ggml_init_params ip = {mem, nullptr, false};
    ggml_context* ctx = ggml_init(ip);
    if (ctx == nullptr) return -2;
    ggml_tensor* w = ggml_new_tensor_2d(ctx, GGML_TYPE_I2_S, cols, rows);
    ggml_tensor* xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cols, n);
    if (w == nullptr || xt == nullptr || ggml_nbytes(w) != w_bytes) {
        ggml_free(ctx);
        return -2;
    }
    memcpy(w->data, w_i2s, w_bytes);
    memcpy(xt->data, x, sizeof(float) * (size_t)cols * n);
    ggml_tensor* y = ggml_mul_mat(ctx, w, xt);
    ggml_cgraph* gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    const auto t0 = std::chrono::steady_clock::now();
    const enum ggml_status st = ggml_graph_compute_with_ctx(ctx, gf, n_threads);
    if (seconds != nullptr) *seconds = seconds_since(t0);
    if (st != GGML_STATUS_SUCCESS) {
        ggml_free(ctx);
        return -3;
    }
    memcpy(out, y->data, sizeof(float) * (size_t)rows * n);
    ggml_free(ctx);
    return 0;
}

}  // extern "C"
