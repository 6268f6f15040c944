#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "memory/host_pages.hpp"

using namespace vmmlab;
namespace fs = std::filesystem;

namespace {
struct TempDir {
    fs::path path;
    TempDir() {
        std::string pattern = (fs::temp_directory_path() / "vmmlab-test-XXXXXX").string();
        path = ::mkdtemp(pattern.data());
    }
    ~TempDir() { fs::remove_all(path); }
};

void write(const fs::path& file, const std::string& text) {
    fs::create_directories(file.parent_path());
    std::ofstream(file) << text;
}
} // namespace

TEST_CASE("hugepage pools are read from sysfs, smallest page first", "[memory]") {
    TempDir sysfs;
    write(sysfs.path / "hugepages-1048576kB/nr_hugepages", "2\n");
    write(sysfs.path / "hugepages-1048576kB/free_hugepages", "1\n");
    write(sysfs.path / "hugepages-1048576kB/resv_hugepages", "0\n");
    write(sysfs.path / "hugepages-2048kB/nr_hugepages", "512\n");
    write(sysfs.path / "hugepages-2048kB/free_hugepages", "500\n");
    write(sysfs.path / "hugepages-2048kB/resv_hugepages", "20\n");
    write(sysfs.path / "not-a-pool/nr_hugepages", "9\n");

    auto pools = read_hugepage_pools(sysfs.path);
    REQUIRE(pools.size() == 2);
    CHECK(pools[0].page_size == 2u << 20);
    CHECK(pools[0].total == 512);
    CHECK(pools[0].available() == 480);
    CHECK(pools[1].page_size == 1u << 30);
    CHECK(pools[1].free == 1);
}

TEST_CASE("a missing hugepages folder means no pools, not an error", "[memory]") {
    CHECK(read_hugepage_pools("/nonexistent/vmmlab/hugepages").empty());
}

TEST_CASE("the selected word of a sysfs choice file", "[memory]") {
    CHECK(selected_choice("always [madvise] never\n") == "madvise");
    CHECK(selected_choice("[always] madvise never") == "always");
    CHECK(selected_choice("always madvise never") == std::nullopt);
    CHECK(selected_choice("[]") == std::nullopt);
    CHECK(read_thp_mode("/nonexistent/vmmlab/thp") == std::nullopt);
}

TEST_CASE("page sizes print in their natural unit", "[memory]") {
    CHECK(format_page_size(4096) == "4K");
    CHECK(format_page_size(2u << 20) == "2M");
    CHECK(format_page_size(1u << 30) == "1G");
    CHECK(format_page_size(1000) == "1000");
}
