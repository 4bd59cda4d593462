package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/weft-net/weft/internal/probe"
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

// DF implements Reach with the daemon's own prober (internal/probe), an
// echo of size bytes with don't-fragment set, from the host's namespace:
// answered, or not (no reply, the kernel refusing a packet above a path
// MTU it already knows, or a router's "fragmentation needed"). Two
// tries, so one lost packet is not a finding.
func (r SysReach) DF(ctx context.Context, dst netip.Addr, size int) (bool, error) {
	var p *probe.Pinger
	if err := r.Host.in(func() (err error) { p, err = probe.Open(); return err }); err != nil {
		return false, fmt.Errorf("open an ICMP socket: %w", err)
	}
	defer p.Close()
	wait := r.Wait
	if wait == 0 {
		wait = 300 * time.Millisecond
	}
	for range 2 {
		_, err := p.Ping(ctx, dst, probe.Options{PacketSize: size, DontFragment: true, Timeout: 2 * wait})
		if err == nil {
			return true, nil
		}
		var ue *probe.UnreachableError
		if errors.As(err, &ue) || errors.Is(err, syscall.EMSGSIZE) {
			return false, nil // does not fit the path: the finding itself
		}
		if !errors.Is(err, probe.ErrTimeout) {
			return false, err
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
	}
	return false, nil
}

func isRefused(err error) bool {
	var se *os.SyscallError
	return errors.Is(err, syscall.ECONNREFUSED) || (errors.As(err, &se) && errors.Is(se.Err, syscall.ECONNREFUSED))
}
