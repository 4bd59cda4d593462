package doctor

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// SysReach is the real Reach over a SysHost's namespace.
type SysReach struct {
	Host *SysHost
	// Wait is how long each of three UDP probes waits (default 300 ms).
	Wait time.Duration
}

var _ Reach = SysReach{}

// UDP implements Reach.
func (r SysReach) UDP(ctx context.Context, dst netip.Addr) (bool, error) {
	wait := r.Wait
	if wait == 0 {
		wait = 300 * time.Millisecond
	}
	return r.Host.probeUDP(dst, func(c net.Conn) error {
		deadline := time.Now().Add(wait)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = c.SetReadDeadline(deadline)
		_, err := c.Read(make([]byte, 64))
		return err
	})
}

// DF implements Reach: not built here. The don't-fragment ICMP prober is
// internal/probe (issue 18 part 1); checkMTU reports the probe as not
// built until it is wired in.
func (SysReach) DF(context.Context, netip.Addr, int) (bool, error) { return false, ErrNotBuilt }

func isRefused(err error) bool {
	var se *os.SyscallError
	return errors.Is(err, syscall.ECONNREFUSED) || (errors.As(err, &se) && errors.Is(se.Err, syscall.ECONNREFUSED))
}
