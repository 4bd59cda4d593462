package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// connTrouble remembers why the client last failed to reach etcd. The
// etcd client waits for a usable connection until a call's context ends
// (gRPC WaitForReady) and then reports only the context's error
// (clientv3.ContextError), so a rejected client certificate, an unknown CA
// or a refused port all read "context deadline exceeded". gRPC's own error
// at that moment names the cause; an interceptor beneath the client's
// retry layer sees it before it is replaced.
type connTrouble struct {
	last atomic.Pointer[string]
}

func (c *connTrouble) intercept(ctx context.Context, method string, req, reply any,
	cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if err == nil {
		c.last.Store(nil)
		return nil
	}
	st, ok := status.FromError(err)
	if !ok || (st.Code() != codes.Unavailable && st.Code() != codes.DeadlineExceeded) {
		return err
	}
	// A deadline that passed on a healthy connection says nothing new.
	if msg := st.Message(); ctx.Err() == nil || msg != ctx.Err().Error() {
		c.last.Store(&msg)
	}
	return err
}

// explain adds the last connection failure to an error that is only a
// deadline.
func (c *connTrouble) explain(err error) error {
	if !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if msg := c.last.Load(); msg != nil {
		return fmt.Errorf("%w (cannot reach etcd: %s)", err, *msg)
	}
	return err
}
