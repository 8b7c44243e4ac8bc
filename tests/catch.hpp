// Catch2 include shim: the CPU machines have Catch2 v2 (catch2/catch.hpp), the GPU machine v3.
#pragma once
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
