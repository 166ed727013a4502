// The sequencer core (hw/sequencer.py, SequencerCore) Verilated, with its scratchpad as a
// memory model in C++: loaded by sim/seq_harness.py with ctypes.
//
// sim/seq_harness.py wraps the core in a Verilog module (sequencer_dpi) whose read ports are
// answered by lbs_mem_read, a DPI-C function called from continuous assignments
// (asynchronous reads, as the on-chip Memory of hw/sequencer.py's Sequencer), and whose write
// port calls lbs_mem_write at the rising edge. The scratchpad is then no top-level input of
// the Verilated model: a clock cycle is one evaluation of the design (at the rising edge: the
// registers, then the combinational logic with its reads), not two (a read answered through
// a top-level input makes every eval re-run all logic that depends on it). The host reaches
// the memory directly (a DMA into an external memory) and the program memory through the
// core's write port.

#include <cstdint>
#include <vector>

#include "verilated.h"
#include "Vseq.h"
#include "Vseq__Dpi.h"

namespace {

struct Seq;
// The sequencer being evaluated (one thread evaluates one model at a time).
thread_local Seq* current = nullptr;

struct Seq {
    VerilatedContext ctx;
    Vseq* top;
    std::vector<int64_t> mem;

    explicit Seq(uint64_t depth) : mem(depth, 0) {
        top = new Vseq{&ctx, "seq"};
        current = this;
        top->clk = 0;
        top->rst = 1;
        top->eval();
        cycle();
        cycle();
        cycle();
        top->rst = 0;
        cycle();
    }
    ~Seq() { top->final(); delete top; }

    // One clock cycle: the falling edge (nothing but the inputs' logic runs), then the
    // rising edge (writes, registers, then every read of the new addresses). The core's inputs
// (reset, program port, start) pass through registers of the wrapper: no logic of the core
// depends on a top-level input either, so the falling edge's eval runs nothing of it.
    void cycle() {
        top->clk = 0;
        top->eval();
        top->clk = 1;
        top->eval();
    }
};

}  // namespace

extern "C" {

long long lbs_mem_read(int addr) {
    uint64_t a = (uint32_t)addr;
    return a < current->mem.size() ? current->mem[a] : 0;
}

void lbs_mem_write(int addr, long long data) {
    uint64_t a = (uint32_t)addr;
    if (a < current->mem.size()) current->mem[a] = data;
}

void* lbs_create(uint64_t depth) { return new Seq(depth); }

void lbs_destroy(void* h) { delete static_cast<Seq*>(h); }

int64_t* lbs_memory(void* h) { return static_cast<Seq*>(h)->mem.data(); }

// n commands of `words` 32-bit words each (LSB first) through the program write port.
void lbs_program(void* h, const uint32_t* data, int64_t n, int64_t words) {
    Seq* s = static_cast<Seq*>(h);
    current = s;
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
    current = s;
    s->top->start = 1;
    s->cycle();         // the last program write and start reach the wrapper's registers
    s->top->start = 0;
    s->cycle();         // the core starts (and counts this cycle as its first)
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
