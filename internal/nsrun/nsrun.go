// Package nsrun runs a function on an OS thread switched into another
// network namespace, for the few calls that take their namespace from the
// calling thread (opening a socket, reading /proc/sys/net) rather than
// from a handle.
package nsrun

import (
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs f in namespace ns and returns its error (or the switch's). f
// runs on a goroutine of its own, locked to its thread for the switch;
// should switching back fail, the thread stays locked, and the runtime
// discards it when the goroutine ends rather than reuse a thread left in
// the wrong namespace.
func Do(ns netns.NsHandle, f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		ferr := f()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		ch <- ferr
	}()
	return <-ch
}
