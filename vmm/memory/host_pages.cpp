#include "memory/host_pages.hpp"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>

namespace vmmlab {

namespace {
std::optional<std::string> read_text(const std::filesystem::path& file) {
    std::ifstream in(file);
    if (!in) return std::nullopt;
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

std::uint64_t read_count(const std::filesystem::path& file) {
    auto text = read_text(file);
    std::uint64_t value = 0;
    if (text) std::from_chars(text->data(), text->data() + text->size(), value);
    return value;
}
} // namespace

std::vector<HugepagePool> read_hugepage_pools(const std::filesystem::path& root) {
    std::vector<HugepagePool> pools;
    std::error_code error;
    for (const auto& entry : std::filesystem::directory_iterator(root, error)) {
        // Folder names look like "hugepages-2048kB".
        const std::string name = entry.path().filename().string();
        constexpr std::string_view prefix = "hugepages-";
        if (!name.starts_with(prefix) || !name.ends_with("kB")) continue;
        std::uint64_t kib = 0;
        const char* first = name.data() + prefix.size();
        const char* last = name.data() + name.size() - 2;
        if (std::from_chars(first, last, kib).ptr != last || kib == 0) continue;
        pools.push_back(HugepagePool{
            .page_size = kib * 1024,
            .total = read_count(entry.path() / "nr_hugepages"),
            .free = read_count(entry.path() / "free_hugepages"),
            .reserved = read_count(entry.path() / "resv_hugepages"),
        });
    }
    std::ranges::sort(pools, {}, &HugepagePool::page_size);
    return pools;
}

std::optional<std::string> selected_choice(std::string_view sysfs_text) {
    auto open = sysfs_text.find('[');
    auto close = sysfs_text.find(']', open);
    if (open == std::string_view::npos || close == std::string_view::npos || close == open + 1)
        return std::nullopt;
    return std::string(sysfs_text.substr(open + 1, close - open - 1));
}

std::optional<std::string> read_thp_mode(const std::filesystem::path& file) {
    auto text = read_text(file);
    if (!text) return std::nullopt;
    return selected_choice(*text);
}

std::string format_page_size(std::uint64_t bytes) {
    constexpr std::uint64_t kKiB = 1024, kMiB = kKiB * 1024, kGiB = kMiB * 1024;
    if (bytes != 0 && bytes % kGiB == 0) return std::to_string(bytes / kGiB) + "G";
    if (bytes != 0 && bytes % kMiB == 0) return std::to_string(bytes / kMiB) + "M";
    if (bytes != 0 && bytes % kKiB == 0) return std::to_string(bytes / kKiB) + "K";
    return std::to_string(bytes);
}

} // namespace vmmlab
