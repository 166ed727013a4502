// The whole board design (accelerator + UART bridge, hw/board.py) Verilated, with the host's
// end of the serial cable in C++: loaded by sim/board_sim.py with ctypes.
//
// The host's bytes go onto the design's rx pin bit by bit (8N1, LSB first, DIVISOR clock cycles
// per bit, the same divisor the design was built with); the design's tx pin is decoded the way a
// USB serial adapter would (start bit confirmed at its middle, every bit sampled at its middle,
// a low stop bit counted as a framing error). Nothing here knows the frame format: Python sees
// a byte port, as it would see a serial port.
//
// Nothing can hang: lbb_read steps the clock for at most timeout_cycles while no host byte is
// waiting to go out (a serial port's read timeout, which starts once the write has left).

#include <cstdint>
#include <deque>

#include "verilated.h"
#include "Vboard.h"

namespace {

struct Board {
    VerilatedContext ctx;
    Vboard* top;
    int divisor;
    uint64_t cycles = 0;
    // host -> design: bytes waiting, the symbol being sent (0 start, 1..8 data, 9 stop)
    std::deque<uint16_t> out;  // byte | 0x100 if its stop bit is to be sent low
    int tx_symbol = -1;        // -1: line idle
    int tx_left = 0;           // cycles left of the current symbol
    uint16_t tx_word = 0;
    // design -> host: the receiver and the bytes received, not read yet
    std::deque<uint8_t> in;
    int rx_state = 0;  // 0 idle, 1 start bit, 2 data bits, 3 stop bit
    int rx_timer = 0, rx_bit = 0;
    uint8_t rx_byte = 0;
    uint64_t framing_errors = 0;

    explicit Board(int div) : divisor(div) { top = new Vboard{&ctx, "board"}; }
    ~Board() { top->final(); delete top; }

    bool tx_idle() const { return tx_symbol < 0 && out.empty(); }

    int line_level() const {
        if (tx_symbol < 0) return 1;
        if (tx_symbol == 0) return 0;
        if (tx_symbol == 9) return (tx_word & 0x100) ? 0 : 1;
        return (tx_word >> (tx_symbol - 1)) & 1;
    }

    void load() {
        tx_symbol = -1;
        if (out.empty()) return;
        tx_word = out.front();
        out.pop_front();
        tx_symbol = 0;
        tx_left = divisor;
    }

    // After a cycle: every symbol lasts exactly `divisor` cycles, bytes follow back to back.
    void advance_tx() {
        if (tx_symbol < 0) { load(); return; }
        if (--tx_left == 0) {
            tx_left = divisor;
            if (++tx_symbol == 10) load();
        }
    }

    void sample_rx(int level) {
        switch (rx_state) {
            case 0:
                if (!level) { rx_state = 1; rx_timer = divisor / 2; }
                break;
            case 1:
                if (--rx_timer == 0) {
                    if (level) rx_state = 0;  // a glitch
                    else { rx_state = 2; rx_timer = divisor; rx_bit = 0; rx_byte = 0; }
                }
                break;
            case 2:
                if (--rx_timer == 0) {
                    rx_byte |= static_cast<uint8_t>(level << rx_bit);
                    rx_timer = divisor;
                    if (++rx_bit == 8) rx_state = 3;
                }
                break;
            case 3:
                if (--rx_timer == 0) {
                    if (level) in.push_back(rx_byte);
                    else ++framing_errors;
                    rx_state = 0;
                }
                break;
        }
    }

    // One clock cycle: the host's line level for this cycle, a rising edge, then the design's
    // tx level as the host sees it after the edge.
    void step() {
        top->rx = line_level();
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
        ++cycles;
        advance_tx();
        sample_rx(top->tx);
    }
};

}  // namespace

extern "C" {

void* lbb_create(int divisor) {
    Board* b = new Board(divisor);
    Verilated::fatalOnError(false);
    b->top->clk = 0;
    b->top->rst = 1;
    b->top->rx = 1;
    b->top->eval();
    for (int i = 0; i < 4; ++i) b->step();
    b->top->rst = 0;
    b->top->eval();
    return b;
}

void lbb_destroy(void* p) { delete static_cast<Board*>(p); }

uint64_t lbb_cycles(void* p) { return static_cast<Board*>(p)->cycles; }

uint64_t lbb_framing_errors(void* p) { return static_cast<Board*>(p)->framing_errors; }

// Queue n bytes for the design's rx pin; bad_stop sends them with a low stop bit.
void lbb_write(void* p, const uint8_t* data, int64_t n, int bad_stop) {
    Board* b = static_cast<Board*>(p);
    for (int64_t i = 0; i < n; ++i) b->out.push_back(data[i] | (bad_stop ? 0x100 : 0));
}

// Host bytes queued or on the wire.
int64_t lbb_pending(void* p) {
    Board* b = static_cast<Board*>(p);
    return static_cast<int64_t>(b->out.size()) + (b->tx_symbol >= 0 ? 1 : 0);
}

// Read up to max bytes from the design's tx pin into buf, stepping the clock as needed. Stops
// after a byte equal to `until` (if 0..255), after max bytes, or once timeout_cycles cycles
// have passed with no host byte left to send. Returns the bytes read.
int64_t lbb_read(void* p, uint8_t* buf, int64_t max, int until, uint64_t timeout_cycles) {
    Board* b = static_cast<Board*>(p);
    int64_t got = 0;
    uint64_t waited = 0;
    while (got < max) {
        if (!b->in.empty()) {
            const uint8_t byte = b->in.front();
            b->in.pop_front();
            buf[got++] = byte;
            if (byte == until) break;
            continue;
        }
        if (waited >= timeout_cycles) break;
        if (b->tx_idle()) ++waited;
        b->step();
    }
    return got;
}

// Step the clock n cycles.
void lbb_run(void* p, uint64_t n) {
    Board* b = static_cast<Board*>(p);
    for (uint64_t i = 0; i < n; ++i) b->step();
}

}  // extern "C"
