// Package template groups what builds Cocoon's guest images: the kernel
// fetched from Debian (kernel), the boot-time initramfs (initramfs), the
// debootstrapped root filesystem and its ext4 image (rootfs), the scripts
// and kernel command line shared by guests and drivers (guest), the
// content-addressed artifact cache they all use (cache), and the default
// template "base" assembled from them (base).
package template
