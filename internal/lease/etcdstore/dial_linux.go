package etcdstore

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpUserTimeout returns a net.Dialer Control setting TCP_USER_TIMEOUT:
// data left unacknowledged for d fails the connection, as gRPC sets it for
// its own dialer when keepalive is on (a custom dialer's connection is not
// a *net.TCPConn to gRPC, so it cannot).
func tcpUserTimeout(d time.Duration) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond))
		})
		if err != nil {
			return err
		}
		return serr
	}
}
