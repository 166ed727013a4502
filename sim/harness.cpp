// Compiled driver for a Verilated matmul unit (docs/hardware.md), loaded by sim/harness.py with
// ctypes.
//
// The harness knows the unit's three stream ports (x, cfg, y) and nothing about the arithmetic or
// the tiling: Python packs whole arrays of payload beats (each beat a little-endian array of
// 32-bit words), one call streams all of them through the model in C++ and returns the output
// beats. One call per matmul instead of one per clock edge is what makes co-simulation fast
// (millions of cycles per second instead of tens of thousands).
//
// Stream rules followed (amaranth.lib.stream): a beat moves when valid & ready at a rising
// clock edge; once valid is high the payload is held until it moves; valid never waits for
// ready. Optional random gaps on x/cfg and stalls on y (seeded xorshift) exercise
// backpressure.
//
// ports.h (generated next to this file for each build) defines the Verilated class (VUNIT,
// VUNIT_HEADER), the mangled member names of the ports (P_X_PAYLOAD, ...) and the payload
// sizes in 32-bit words (X_WORDS, CFG_WORDS, Y_WORDS).

#include <cstdint>
#include <cstddef>

#include "verilated.h"
#include "ports.h"
#include VUNIT_HEADER

// Set by Harness::edge() around the rising-edge eval, read by the model's _eval when
// sim/verilator.py could patch it (LB_ICO_PATCHED in ports.h): see edge().
bool lb_skip_ico = false;

namespace {

// Copy between a port member (whatever C type Verilator chose for its width) and words.
inline void put(CData& p, const uint32_t* w) { p = static_cast<CData>(w[0]); }
inline void put(SData& p, const uint32_t* w) { p = static_cast<SData>(w[0]); }
inline void put(IData& p, const uint32_t* w) { p = w[0]; }
inline void put(QData& p, const uint32_t* w) {
    p = static_cast<QData>(w[0]) | (static_cast<QData>(w[1]) << 32);
}
template <std::size_t N> inline void put(VlWide<N>& p, const uint32_t* w) {
    for (std::size_t i = 0; i < N; ++i) p[i] = w[i];
}
inline void get(const CData& p, uint32_t* w) { w[0] = p; }
inline void get(const SData& p, uint32_t* w) { w[0] = p; }
inline void get(const IData& p, uint32_t* w) { w[0] = p; }
inline void get(const QData& p, uint32_t* w) {
    w[0] = static_cast<uint32_t>(p);
    w[1] = static_cast<uint32_t>(p >> 32);
}
template <std::size_t N> inline void get(const VlWide<N>& p, uint32_t* w) {
    for (std::size_t i = 0; i < N; ++i) w[i] = p[i];
}

struct Rng {  // xorshift64*: cheap, seeded, identical on every platform
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 2685821657736338717ULL + 0x9E3779B97F4A7C15ULL) {
        if (!s) s = 1;
    }
    // true with probability ppm / 1e6
    bool chance(uint32_t ppm) {
        if (!ppm) return false;
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        return (s * 2685821657736338717ULL) % 1000000ULL < ppm;
    }
};

struct Harness {
    VerilatedContext ctx;
    VUNIT* top;
    uint64_t cycles = 0;  // rising edges since creation (reset included)
    Harness() { top = new VUNIT{&ctx, "unit"}; }
    ~Harness() { top->final(); delete top; }

    // One rising edge. The inputs of the next cycle are set while clk is low and evaluated
    // together with the falling edge (one eval), so a cycle costs two evals, not three.
    // Verilator re-evaluates all input-driven combinational logic (its "ico" region) at every
    // eval, and Amaranth's next-state logic depends on the stream inputs, so that region holds
    // most of the design (the whole PE array's next state). The inputs are unchanged since the
    // last eval here (only clk rises, and no logic reads clk as data), so its values are still
    // current: the patched model skips it for this eval and a cycle costs one ico pass, not two.
    void edge() {
        top->clk = 1;
        lb_skip_ico = true;
        top->eval();
        lb_skip_ico = false;
        top->clk = 0;
        ++cycles;
    }
};

}  // namespace

extern "C" {

int lb_x_words() { return X_WORDS; }
int lb_cfg_words() { return CFG_WORDS; }
int lb_y_words() { return Y_WORDS; }

void* lb_create() {
    Harness* h = new Harness;
    Verilated::fatalOnError(false);
    h->top->clk = 0;
    h->top->rst = 1;
    h->top->P_X_VALID = 0;
    h->top->P_CFG_VALID = 0;
    h->top->P_Y_READY = 0;
    h->top->eval();
    for (int i = 0; i < 4; ++i) {
        h->edge();
        h->top->eval();
    }
    h->top->rst = 0;
    h->top->eval();
    return h;
}

void lb_destroy(void* p) { delete static_cast<Harness*>(p); }

uint64_t lb_cycles(void* p) { return static_cast<Harness*>(p)->cycles; }

// Stream n_cfg cfg beats and n_x x beats into the unit and collect n_y y beats.
// Returns the number of y beats received: n_y on success, fewer if max_cycles ran out first
// (a hang). stats receives [clock cycles this call took, cfg beats taken, x beats taken].
int64_t lb_run(void* p, const uint32_t* cfg, int64_t n_cfg, const uint32_t* x, int64_t n_x,
               uint32_t* y, int64_t n_y, uint64_t seed, uint32_t gap_ppm, uint32_t stall_ppm,
               uint64_t max_cycles, uint64_t* stats) {
    Harness* h = static_cast<Harness*>(p);
    VUNIT* t = h->top;
    Rng rng(seed);
    int64_t ic = 0, ix = 0, iy = 0;
    bool cv = false, xv = false;  // a beat is being offered (held until it moves)
    uint64_t start = h->cycles;
    while (iy < n_y && h->cycles - start < max_cycles) {
        if (!cv && ic < n_cfg && !rng.chance(gap_ppm)) {
            put(t->P_CFG_PAYLOAD, cfg + ic * CFG_WORDS);
            cv = true;
        }
        if (!xv && ix < n_x && !rng.chance(gap_ppm)) {
            put(t->P_X_PAYLOAD, x + ix * X_WORDS);
            xv = true;
        }
        const bool yr = !rng.chance(stall_ppm);
        t->P_CFG_VALID = cv;
        t->P_X_VALID = xv;
        t->P_Y_READY = yr;
        t->eval();
        const bool cfire = cv && t->P_CFG_READY;
        const bool xfire = xv && t->P_X_READY;
        if (yr && t->P_Y_VALID) {
            get(t->P_Y_PAYLOAD, y + iy * Y_WORDS);
            ++iy;
        }
        h->edge();
        if (cfire) { ++ic; cv = false; }
        if (xfire) { ++ix; xv = false; }
    }
    t->P_CFG_VALID = 0;
    t->P_X_VALID = 0;
    t->P_Y_READY = 0;
    t->eval();
    stats[0] = h->cycles - start;
    stats[1] = static_cast<uint64_t>(ic);
    stats[2] = static_cast<uint64_t>(ix);
    return iy;
}

}  // extern "C"
