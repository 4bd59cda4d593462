package etcdstore

import (
	"context"
	"log/slog"
	"testing"
	"time"
)

// The pacer slows dials only to a server that refused our TLS handshake: a
// dead backend (no byte from it) leaves the fast schedule alone, and a
// handshake that succeeds resets it.
func TestDialPacer(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newDialPacer(slog.New(slog.DiscardHandler))
	p.now = func() time.Time { return now }
	const a, b = "10.0.0.1:2379", "10.0.0.2:2379"
	delay := func(addr string) time.Duration {
		p.mu.Lock()
		defer p.mu.Unlock()
		if pc := p.addrs[addr]; pc != nil && pc.notBefore.After(now) {
			return pc.notBefore.Sub(now)
		}
		return 0
	}
	steps := []struct {
		what     string
		addr     string
		ok       bool
		answered bool
		want     time.Duration
	}{
		{"nothing behind the address", a, false, false, 0},
		{"handshake refused", a, false, true, time.Second},
		{"again", a, false, true, 2 * time.Second},
		{"again", a, false, true, 4 * time.Second},
		{"nothing behind it now: the pace stays", a, false, false, 4 * time.Second},
		{"a handshake that succeeds resets it", a, true, true, 0},
		{"refused once more: from the start", a, false, true, time.Second},
		{"another address keeps its own pace", b, false, false, 0},
	}
	for _, s := range steps {
		p.handshake(s.addr, s.ok, s.answered)
		if got := delay(s.addr); got != s.want {
			t.Errorf("%s (%s): next dial in %v, want %v", s.what, s.addr, got, s.want)
		}
	}
	for i := 0; i < 10; i++ {
		p.handshake(a, false, true)
	}
	if got := delay(a); got != rejectPenaltyMax {
		t.Errorf("after many refusals: next dial in %v, want the cap %v", got, rejectPenaltyMax)
	}

	// wait honours the schedule and the context.
	p.now = time.Now
	p.addrs[a].notBefore = time.Now().Add(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := p.wait(ctx, a); err == nil {
		t.Error("wait returned before the scheduled dial, without the context ending")
	}
	if err := p.wait(context.Background(), b); err != nil {
		t.Errorf("wait for an address with no penalty: %v", err)
	}
}
