//go:build !linux

package etcdstore

import (
	"syscall"
	"time"
)

// tcpUserTimeout is Linux's; elsewhere gRPC's keepalive pings alone detect
// a dead connection.
func tcpUserTimeout(time.Duration) func(network, address string, c syscall.RawConn) error {
	return nil
}
