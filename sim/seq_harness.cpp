// The sequencer core (hw/sequencer.py, SequencerCore) Verilated, with its scratchpad as a
// memory model in C++: loaded by sim/seq_harness.py with ctypes.
//
// Each clock cycle: the core's read addresses settle, the memory answers them (asynchronous
// reads, as the on-chip Memory of hw/sequencer.py's Sequencer), the write port's request of
// that cycle is applied at the rising edge. The host reaches the memory directly (a DMA into
// an external memory) and the program memory through the core's write port.
//
// sim/seq_harness.py defines SEQ_LANES (the core's read lanes beside the six slot ports,
// rd_addr_lane / rd_data_lane: 32-bit addresses, 64-bit words) and SEQ_COLS (the words of its
// write port, wr_data, one enable bit each in wr_en) before this file.

#include <cstdint>
#include <vector>

#include "verilated.h"
#include "Vseq.h"

#ifndef SEQ_LANES
#define SEQ_LANES 0
#endif
#ifndef SEQ_COLS
#define SEQ_COLS 1
#endif

namespace {

// Field i of a port packed from 32-bit (addresses) or 64-bit (data) fields; Verilator keeps a
// port of up to 64 bits in an integer, a wider one in a VlWide of 32-bit words.
template <typename T>
uint32_t field32(const T& port, int i) { return (uint32_t)((uint64_t)port >> (32 * i)); }
template <std::size_t N>
uint32_t field32(const VlWide<N>& port, int i) { return port[i]; }
template <typename T>
int64_t field64(const T& port, int) { return (int64_t)port; }
template <std::size_t N>
int64_t field64(const VlWide<N>& port, int i) {
    return (int64_t)(((uint64_t)port[2 * i + 1] << 32) | port[2 * i]);
}
template <typename T>
void set64(T& port, int, int64_t v) { port = (uint64_t)v; }
template <std::size_t N>
void set64(VlWide<N>& port, int i, int64_t v) {
    port[2 * i] = (uint32_t)v;
    port[2 * i + 1] = (uint32_t)((uint64_t)v >> 32);
}

struct Seq {
    VerilatedContext ctx;
    Vseq* top;
    std::vector<int64_t> mem;

    explicit Seq(uint64_t depth) : mem(depth, 0) {
        top = new Vseq{&ctx, "seq"};
        top->clk = 0;
        top->rst = 1;
        top->eval();
        cycle();
        cycle();
        top->rst = 0;
    }
    ~Seq() { top->final(); delete top; }

    int64_t read(uint64_t addr) const { return addr < mem.size() ? mem[addr] : 0; }

    // The read addresses come from registers only (never from read data), so they have
    // settled with the rising edge's eval: one eval answers them with the falling edge, one
    // more is the rising edge.
    void cycle() {
        top->clk = 0;
        top->rd_data_0 = read(top->rd_addr_0);
        top->rd_data_1 = read(top->rd_addr_1);
        top->rd_data_2 = read(top->rd_addr_2);
        top->rd_data_3 = read(top->rd_addr_3);
        top->rd_data_4 = read(top->rd_addr_4);
        top->rd_data_5 = read(top->rd_addr_5);
#if SEQ_LANES > 0
        for (int i = 0; i < SEQ_LANES; i++)
            set64(top->rd_data_lane, i, read(field32(top->rd_addr_lane, i)));
#endif
        top->eval();
        uint64_t we = top->wr_en;
        uint64_t wa = top->wr_addr;
        int64_t wd[SEQ_COLS];
        for (int c = 0; c < SEQ_COLS; c++) wd[c] = field64(top->wr_data, c);
        top->clk = 1;
        top->eval();
        for (int c = 0; c < SEQ_COLS; c++)
            if (((we >> c) & 1) && wa + c < mem.size()) mem[wa + c] = wd[c];
    }
};

}  // namespace

extern "C" {

void* lbs_create(uint64_t depth) { return new Seq(depth); }

void lbs_destroy(void* h) { delete static_cast<Seq*>(h); }

int64_t* lbs_memory(void* h) { return static_cast<Seq*>(h)->mem.data(); }

// n commands of `words` 32-bit words each (LSB first) through the program write port.
void lbs_program(void* h, const uint32_t* data, int64_t n, int64_t words) {
    Seq* s = static_cast<Seq*>(h);
    for (int64_t i = 0; i < n; i++) {
        s->top->prog_we = 1;
        s->top->prog_waddr = (uint32_t)i;
        for (int64_t w = 0; w < words; w++) s->top->prog_wdata[w] = data[i * words + w];
        s->cycle();
    }
    s->top->prog_we = 0;
}

// Pulse start and run until done (at most max_cycles). marks[j]: the cycle at which the
// program counter changed for the j-th time (at most max_marks kept); *n_marks: how many.
// Returns the core's cycle count, or -1 when it did not finish.
int64_t lbs_run(void* h, uint64_t max_cycles, uint64_t* marks, int64_t max_marks,
                int64_t* n_marks) {
    Seq* s = static_cast<Seq*>(h);
    s->top->start = 1;
    s->cycle();
    s->top->start = 0;
    uint32_t pc = s->top->pc;
    int64_t n = 0;
    uint64_t c = 1;
    for (; c < max_cycles; c++) {
        if (s->top->done) break;
        s->cycle();
        if (s->top->pc != pc) {
            pc = s->top->pc;
            if (n < max_marks) marks[n] = c;
            n++;
        }
    }
    *n_marks = n;
    if (!s->top->done) return -1;
    return (int64_t)s->top->cycles;
}

}  // extern "C"
