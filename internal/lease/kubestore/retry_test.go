package kubestore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Requests that met nothing are retried on the short fixed schedule; those
// a server answered back off.
func TestRetryAfter(t *testing.T) {
	get := func(err error) error {
		return &url.Error{Op: "Get", URL: "https://10.0.0.1:6443/api/v1/nodes", Err: err}
	}
	for _, c := range []struct {
		name string
		err  error
		fast bool
	}{
		{"connection refused", get(&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), true},
		{"reset", get(&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}), true},
		{"closed by a load balancer", get(io.EOF), true},
		{"an empty watch (client-go's EOF)", notOpened{errEmptyWatch}, true},
		{"unexpected EOF", fmt.Errorf("watch: %w", io.ErrUnexpectedEOF), true},
		{"no route", get(&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}), true},
		{"timeout", get(&net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}), true},
		{"certificate refused", get(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), false},
		{"TLS alert", get(&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}), false},
		{"429", apierrors.NewTooManyRequests("storage is (re)initializing", 1), false},
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "", errors.New("RBAC")), false},
		{"503", apierrors.NewServiceUnavailable("not ready"), false},
	} {
		wait, next := retryAfter(c.err, time.Second)
		if c.fast {
			if wait < 200*time.Millisecond || wait > 300*time.Millisecond || next != time.Second {
				t.Errorf("%s: wait %v, next backoff %v; want 200-300 ms and the backoff kept", c.name, wait, next)
			}
		} else if wait != time.Second || next != 2*time.Second {
			t.Errorf("%s: wait %v, next backoff %v; want the backoff (1s), doubled", c.name, wait, next)
		}
	}
	if _, next := retryAfter(apierrors.NewServiceUnavailable("x"), maxBackoff); next != maxBackoff {
		t.Errorf("backoff beyond the cap: %v", next)
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }
