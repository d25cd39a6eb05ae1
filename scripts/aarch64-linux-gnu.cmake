# Cross build for 64-bit ARM Linux (Jetson, Raspberry Pi 4/5, Graviton) from an x86-64 Debian 12
# machine, the tests run under qemu-user (scripts/setup.sh builds build-arm64/ with it):
#   apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=scripts/aarch64-linux-gnu.cmake
# Only the core (no FFmpeg, GStreamer, libwebsockets, OpenBLAS: their arm64 packages are not
# installed); on an ARM machine itself build natively as on any other.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# pkg-config would report the host's x86-64 libraries
set(CMAKE_DISABLE_FIND_PACKAGE_PkgConfig ON)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/aarch64-linux-gnu)
